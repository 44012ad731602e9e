"""What ends with the Slurm job or the kernel: a cancelled job (JupyterHub's "Stop My Server" is
``scancel``: SIGTERM to every process of the job, SIGKILL after KillWait) and a SIGKILLed kernel
leave no process, job step or file of a cluster or of a ``%%torchrun`` run behind."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

import ipcmagic
from ipcmagic.base.errors import ClusterError
from ipcmagic.base.watchdog import unconfirmed

#: a kernel-like process: a cluster, then a long %%torchrun cell; says when both run
KERNEL = """
import os, sys
from IPython.core.interactiveshell import InteractiveShell
shell = InteractiveShell.instance()
shell.run_line_magic("load_ext", "ipcmagic")
if sys.argv[1] == "cluster":
    shell.run_line_magic("ipcluster", "start -n 2")
print("job", os.environ.get("SLURM_JOB_ID"), flush=True)
shell.run_cell_magic("torchrun", "-n 2 --launcher " + sys.argv[2],
    "import subprocess, time\\n"
    "subprocess.Popen(['sleep', '300'])  # a rank's own child\\n"
    "print('running', flush=True)\\n"
    "time.sleep(300)\\n")
"""


def start_kernel(command: list[str]) -> tuple[subprocess.Popen, str]:
    """Start the kernel-like process; return it and its job id once both ranks run (within 120 s,
    else kill it, as the tests do next, and fail with what it said)."""
    kernel = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:  # to its end, so that the kernel never blocks on a full pipe
        with kernel.stdout:
            for line in kernel.stdout:
                lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    job, running, seen = None, 0, []
    deadline = time.monotonic() + 120
    try:
        while running < 2:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            seen.append(line)
            job = line.split()[1] if line.startswith("job ") else job
            running += line.rstrip().endswith("] running")
    except queue.Empty:
        kernel.kill()
        pytest.fail("both ranks were not running after 120 s; the kernel said:\n" + "".join(seen))
    return kernel, job


def test_cancelled_job_leaves_nothing(slurm, nothing_left):
    """scancel while a cluster and a %%torchrun step run, the kernel itself a job step."""
    kernel, job = start_kernel(
        ["salloc", "-Q", "-n", "5", "-J", "ipcmagic-cancel", "srun", "-n", "1"]
        + [sys.executable, "-c", KERNEL, "cluster", "srun"]
    )
    subprocess.run(["scancel", job], check=True)
    kernel.wait(60)
    # nothing_left: no process, no step and no /tmp/ipcmagic-* (the cluster's or the run's)


@pytest.mark.parametrize("launcher", ["standalone", "srun"])
def test_killed_kernel_stops_its_torchrun(request, torch_installed, nothing_left, launcher):
    request.getfixturevalue("in_allocation" if launcher == "srun" else "outside_slurm")
    kernel, _ = start_kernel([sys.executable, "-c", KERNEL, "no cluster", launcher])
    os.kill(kernel.pid, signal.SIGKILL)
    kernel.wait()


@contextlib.contextmanager
def slurmctld_down():
    """slurmctld stops answering (SIGSTOP: a controller that is down or busy), then comes back."""
    pid = int((Path(os.environ["SLURM_CONF"]).parents[1] / "run" / "slurmctld.pid").read_text())
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def watchdogs() -> list[str]:
    running = (" ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"]))
    return [cmdline for cmdline in running if "ipcmagic.base.watchdog" in cmdline]


def test_what_runs_in_no_step_stops_without_asking_slurm(
    ip, in_allocation, monkeypatch, capfd, torch_installed
):
    """Before (issue 30, item 7): with Slurm not answering (slurmctld down, or a container kernel
    without Slurm's commands), a local cluster's stop and a standalone %%torchrun's end said Slurm had
    not confirmed that the step ended (there is none) and left a watchdog retrying for an hour."""
    monkeypatch.setenv("SLURM_JOB_CPUS_PER_NODE", "8")  # as in a batch job: planning asks no Slurm
    capfd.readouterr()
    with slurmctld_down():
        tic = time.monotonic()
        ip.run_line_magic("ipcluster", "start -n 2 --launcher local")
        ip.run_line_magic("ipcluster", "stop")
        ip.run_cell_magic("torchrun", "-n 2 --launcher standalone", "pass")
        took = time.monotonic() - tic
        said = capfd.readouterr().err
        left = watchdogs()
    assert "Slurm did not answer" not in said and not left, (said, left)
    assert took < 60, f"start, stop and a run took {took:.1f} s"


def test_stop_and_a_failed_start_are_bounded_with_slurmctld_down(ip, in_allocation, monkeypatch, capfd):
    """slurmctld down: %ipcluster stop took 23 s and --timeout 20 returned after 27 s (issue 21);
    now stop returns within 5 s saying what Slurm did not confirm, and the watchdog cancels the
    step once Slurm answers (the fixture then finds nothing left)."""
    monkeypatch.setenv("SLURM_JOB_CPUS_PER_NODE", "8")  # as in a batch job: planning asks no Slurm
    ip.run_line_magic("ipcluster", "start -n 3")
    step = f"ipcmagic-{ipcmagic.client().cluster.cluster_id}"
    capfd.readouterr()
    with slurmctld_down():
        tic = time.monotonic()
        ip.run_line_magic("ipcluster", "stop")
        stopped = time.monotonic() - tic
        assert stopped <= 5, f"stop took {stopped:.1f} s"
        assert unconfirmed(step) in capfd.readouterr().err
        tic = time.monotonic()
        with pytest.raises(ClusterError, match="0 of 3 engines registered within 8 s"):
            ip.run_line_magic("ipcluster", "start -n 3 --timeout 8")
        failed = time.monotonic() - tic
        assert failed <= 8.5, f"a start with --timeout 8 took {failed:.1f} s"
