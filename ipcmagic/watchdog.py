"""A watchdog that stops a kernel's cluster when the kernel dies, even by SIGKILL.

``atexit`` cannot run when a kernel is killed, and ipyparallel starts its processes in new
sessions, so they outlive it. So each cluster gets this tiny process, in its own session,
holding the read end of a pipe whose write end only the kernel has. When the kernel dies
for any reason, the pipe reaches end-of-file and the watchdog:

1. sends SIGTERM to every process on this host whose environment carries the cluster's
   ``IPP_CLUSTER_ID`` (controller, srun/mpirun, engines: ipyparallel sets it for all of them),
   and cancels the cluster's Slurm job step by its name (engines on other nodes);
2. sends SIGKILL to what is left after a grace period, and removes the cluster's directory.

A clean stop writes ``stop`` to the pipe first; the watchdog then exits doing nothing.
While it waits, it also ends the helper processes of a controller that died (they would keep
answering the engines' heartbeat checks), so that the engines exit by themselves.
"""

from __future__ import annotations

import argparse
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

#: the command line of a controller: ipcmagic's, or ipyparallel's where a site configured that
CONTROLLER = re.compile(rb"(ipcmagic|ipyparallel)\.controller")


class Watchdog:
    """The kernel's side: start the watchdog, and tell it when the cluster was stopped cleanly."""

    def __init__(self, cluster_id: str, directory: str, job_id: str | None) -> None:
        self.cluster = (cluster_id, directory, job_id)
        read_end, self._write_end = os.pipe()  # not inherited by anything else the kernel starts
        argv = [sys.executable, "-m", "ipcmagic.watchdog", cluster_id, directory]
        self.process = subprocess.Popen(
            [*argv, *([job_id] if job_id else [])],
            stdin=read_end,
            stdout=subprocess.DEVNULL,
            start_new_session=True,  # signals to the kernel's process group must not reach it
        )
        os.close(read_end)

    def release(self) -> None:
        """After a stop: remove whatever is left of the cluster, then let the watchdog exit."""
        clean_up(*self.cluster, grace=1.0)
        os.write(self._write_end, b"stop\n")
        os.close(self._write_end)
        self.process.wait()


def _cluster_pids(cluster_id: str) -> list[int]:
    marker = f"IPP_CLUSTER_ID={cluster_id}".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker in (proc / "environ").read_bytes().split(b"\0"):
                pids.append(int(proc.name))
        except OSError:  # gone, or not ours
            continue
    return pids


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _cancel_steps(job_id: str, cluster_id: str) -> None:
    name = f"ipcmagic-{cluster_id}"
    try:
        out = subprocess.run(
            ["squeue", "--steps", "-h", "-j", job_id, "-o", "%i %j"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
        steps = [line.split()[0] for line in out.splitlines() if line.split()[1:] == [name]]
        if steps:
            subprocess.run(["scancel", *steps], timeout=30)
    except (OSError, subprocess.SubprocessError):
        pass  # the processes on this host are signalled anyway


def clean_up(cluster_id: str, directory: str, job_id: str | None, grace: float = 5.0) -> None:
    """Stop everything of the cluster: SIGTERM, step cancel, SIGKILL after ``grace``, files."""
    _signal_all(_cluster_pids(cluster_id), signal.SIGTERM)
    if job_id:
        _cancel_steps(job_id, cluster_id)
    deadline = time.monotonic() + grace
    while (left := _cluster_pids(cluster_id)) and time.monotonic() < deadline:
        time.sleep(0.1)
    _signal_all(left, signal.SIGKILL)
    shutil.rmtree(directory, ignore_errors=True)


def _reap_orphaned_controller(cluster_id: str, kernel: int) -> None:
    """If the controller died, end the helper processes it leaves, so engines stop getting pings."""
    controller = [pid for pid in _cluster_pids(cluster_id) if CONTROLLER.search(_read(pid, "cmdline"))]
    parents = [_parent(pid) for pid in controller]
    if any(parent not in (None, kernel, *controller) for parent in parents):
        _signal_all(controller, signal.SIGKILL)


def _parent(pid: int) -> int | None:
    """The parent pid, or None if the process is gone."""
    fields = _read(pid, "stat").rsplit(b")", 1)[-1].split()  # after "(comm)": state, ppid, ...
    return int(fields[1]) if len(fields) > 1 else None


def _read(pid: int, name: str) -> bytes:
    try:
        return (Path("/proc") / str(pid) / name).read_bytes()
    except OSError:
        return b""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cluster_id")
    parser.add_argument("directory")
    parser.add_argument("job_id", nargs="?")
    args = parser.parse_args()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    kernel = os.getppid()
    while True:
        if not select.select([sys.stdin], [], [], 1.0)[0]:
            _reap_orphaned_controller(args.cluster_id, kernel)
            continue
        if os.read(sys.stdin.fileno(), 16) != b"stop\n":  # end-of-file: the kernel died
            clean_up(args.cluster_id, args.directory, args.job_id)
        return


if __name__ == "__main__":
    main()
