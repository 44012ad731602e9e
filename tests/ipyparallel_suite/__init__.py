"""ipyparallel 9.2's own tests of views and magics, run against ipcmagic (issue 29).

``test_view.py`` and ``test_magics.py`` are ipyparallel 9.2.0's ``ipyparallel/tests`` files,
unchanged (Modified BSD License, IPython Development Team: COPYING.md here). What differs is what
they run against, in this module, ``clienttest.py`` and ``conftest.py`` (adapted from the same
release's files of the same names):

- the cluster is started by ipcmagic's :class:`~ipcmagic.cluster.IPCluster` (its controller, its
  engines), in a helper process as a kernel would (``cluster.py``), whose connection files stand
  in the ``iptest`` profile the tests connect to; engines the tests add are ipyparallel's
  ``ipengine``, as upstream's;
- every view the tests take of a client (``client[:]``, ``client[-1]``, ``client.direct_view()``)
  is the view ``%px`` runs on, :class:`ipcmagic.cluster.pxview.PxView`, one-engine views included.
"""

import os
import subprocess
import sys
import time
from pathlib import Path
from subprocess import Popen

from ipyparallel import Client, error
from ipyparallel.cluster.launcher import (
    SIGKILL,
    LocalProcessLauncher,
    ProcessStateError,
    ipengine_cmd_argv,
)
from IPython.paths import get_ipython_dir

#: the ipyparallel release these tests come from (under CI=true another release fails them)
VENDORED = "9.2.0"
# engines started by add_engines, stopped by teardown
launchers = []
#: the helper process running the ipcmagic cluster
_cluster: list[Popen] = []


class TestProcessLauncher(LocalProcessLauncher):
    """ipyparallel's: a LocalProcessLauncher without extra sockets and threads."""

    def start(self):
        if self.state == "before":
            self.process = Popen(self.args, env=os.environ, cwd=self.work_dir)
            self.notify_start(self.process.pid)
            self.poll = self.process.poll
        else:
            raise ProcessStateError(f"The process was already started and has state: {self.state!r}")


class RemoteErrorWithTB(error.RemoteError):
    """ipyparallel's: show tracebacks of RemoteErrors."""

    def __str__(self):
        return "\n".join([super().__str__(), self.traceback or ""])


def security_dir(profile="iptest"):
    return Path(get_ipython_dir()) / f"profile_{profile}" / "security"


def setup(engines=2):
    """Start an ipcmagic cluster of ``engines`` local engines for the ``iptest`` profile."""
    error.RemoteError = RemoteErrorWithTB
    security = security_dir()
    security.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    helper = Popen(
        [sys.executable, str(Path(__file__).with_name("cluster.py")), str(security), str(engines)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    _cluster.append(helper)
    for said in helper.stdout:  # after the start's progress bar
        if said.strip() == "ready":
            return
    raise RuntimeError(f"the ipcmagic cluster did not start (exit {helper.wait(60)})")


def add_engines(n=1, profile="iptest", total=False):
    """ipyparallel's: add ``n`` ipengines (with ``total``: up to ``n`` engines in all)."""
    rc = Client(profile=profile)
    base = len(rc)
    if total:
        n = max(n - base, 0)
    eps = []
    for _ in range(n):
        ep = TestProcessLauncher()
        ep.cmd_and_args = ipengine_cmd_argv + [
            f"--profile={profile}",
            "--InteractiveShell.colors=nocolor",
            "--log-level=10",
        ]
        ep.start()
        launchers.append(ep)
        eps.append(ep)
    tic = time.time()
    while len(rc) < base + n:
        if any(ep.poll() is not None for ep in eps):
            raise RuntimeError("A test engine failed to start.")
        elif time.time() - tic > 15:
            raise RuntimeError("Timeout waiting for engines to connect.")
        time.sleep(0.1)
    rc.close()
    return eps


def teardown():
    """Stop the added engines, then the ipcmagic cluster (which must end all of its own)."""
    while launchers:
        p = launchers.pop()
        if p.poll() is None:
            p.signal(SIGKILL)
            p.process.wait(10)
    while _cluster:
        helper = _cluster.pop()
        helper.stdin.close()  # the helper stops its cluster and exits
        if helper.wait(60) != 0:
            raise RuntimeError(f"stopping the ipcmagic cluster failed (exit {helper.returncode})")
