"""A watchdog that stops what a kernel started when the kernel dies, even by SIGKILL, or when
the Slurm job ends.

``atexit`` cannot run when a kernel is killed, and ipcmagic starts its processes in new
sessions, so they outlive it. So each cluster, and each ``%%torchrun`` run, gets this tiny
process, in its own session, holding the read end of a pipe whose write end only the kernel
has. What it guards is named by a *marker*, an environment entry every process of it carries
(``IPP_CLUSTER_ID=<id>``: ipyparallel sets it for controller, srun/mpirun and engines;
``IPCMAGIC_TORCHRUN=<token>`` for a run's launcher and ranks, and their children), the
Slurm job step's name, and one directory. When the kernel dies for any reason, the pipe
reaches end-of-file and the watchdog:

1. sends SIGTERM to every process on this host that carries the marker, removes the
   directory, and cancels the job step by its name (processes on other nodes);
2. sends SIGKILL to what is left after a grace period, and removes the directory again.

SIGTERM to the watchdog means the same: Slurm sends it to every process of a job that is
cancelled (JupyterHub's "Stop My Server"), reaches its time limit or is preempted, and
SIGKILL follows after the cluster's KillWait; so the watchdog cleans up at once, files
first, instead of dying with the kernel and leaving them.

A clean stop writes ``stop`` to the pipe first; the watchdog then exits doing nothing. When
Slurm did not confirm within 2 s that the step is gone (slurmctld down or busy), the stop
returns anyway and writes ``finish``: the watchdog then cancels the step once Slurm answers
(or gives up when the job ends, which ends the step). Only an srun cluster or run has a step.
While it waits, it also ends the helper processes of a controller that died (they would keep
answering the engines' heartbeat checks), so that the engines exit by themselves.
"""

from __future__ import annotations

import argparse
import contextlib
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
#: seconds a Slurm command may take in a clean-up (slurmctld may be down or busy)
SLURM_TIMEOUT = 5
#: seconds a clean stop waits for Slurm to confirm that the step is gone; then the watchdog finishes
CONFIRM_TIMEOUT = 2.0
#: how long the watchdog keeps trying to cancel the step after such a stop (the job may end first)
FINISH_WITHIN = 3600


class JobEnding(Exception):
    """SIGTERM reached the watchdog: the job is being cancelled or has run out of time."""


class Watchdog:
    """The kernel's side: start the watchdog, and tell it when everything was stopped cleanly."""

    def __init__(self, marker: str, directory: str, job_id: str | None, step: str) -> None:
        self.guarded = (marker, directory, job_id, step)
        read_end, self._write_end = os.pipe()  # not inherited by anything else the kernel starts
        argv = [sys.executable, "-m", "ipcmagic.base.watchdog", marker, directory, step]
        self.process = subprocess.Popen(
            [*argv, *([job_id] if job_id else [])],
            stdin=read_end,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,  # Slurm's complaints about a vanishing job are no news to the user
            start_new_session=True,  # signals to the kernel's process group must not reach it
        )
        os.close(read_end)

    def release(self) -> None:
        """After a stop: remove whatever is left, then let the watchdog exit. When Slurm does not
        confirm in time that the step is gone, say so: the watchdog cancels it once Slurm answers."""
        marker, directory, job_id, step = self.guarded
        confirmed = clean_up(marker, directory, job_id, step, grace=1.0, slurm_timeout=CONFIRM_TIMEOUT)
        os.write(self._write_end, b"stop\n" if confirmed else b"finish\n")
        os.close(self._write_end)
        if confirmed:
            self.process.wait()
        else:
            print(unconfirmed(step), file=sys.stderr)


def unconfirmed(step: str) -> str:
    """What a stop says when Slurm did not answer."""
    return (
        f"ipcmagic: Slurm did not answer within {CONFIRM_TIMEOUT:g} s, so it has not confirmed that job "
        f"step {step} ended; its processes on this node are gone, and a watchdog cancels the step once "
        "Slurm answers."
    )


def _marked_pids(marker_text: str) -> list[int]:
    marker = marker_text.encode()
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


def scancel(*args: str, timeout: float = SLURM_TIMEOUT) -> bool:
    """``scancel args``; whether Slurm answered yes."""
    try:
        return subprocess.run(["scancel", *args], stderr=subprocess.DEVNULL, timeout=timeout).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _cancel_steps(job_id: str, name: str, timeout: float = SLURM_TIMEOUT) -> bool:
    """Cancel the job's steps called ``name``; whether Slurm answered (the processes on this host
    are signalled anyway)."""
    try:
        listed = subprocess.run(
            ["squeue", "--steps", "-h", "-j", job_id, "-o", "%i %j"],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    steps = [line.split()[0] for line in listed.stdout.splitlines() if line.split()[1:] == [name]]
    if listed.returncode or not steps:
        return listed.returncode == 0
    return scancel(*steps, timeout=timeout)


def clean_up(
    marker: str,
    directory: str,
    job_id: str | None,
    step: str,
    grace: float = 5.0,
    slurm_timeout: float = SLURM_TIMEOUT,
) -> bool:
    """Stop everything ``marker`` marks: SIGTERM, files, step cancel, SIGKILL after ``grace``;
    whether Slurm confirmed that the step is gone (True without a job)."""
    _signal_all(_marked_pids(marker), signal.SIGTERM)
    shutil.rmtree(directory, ignore_errors=True)  # first: SIGKILL may follow soon on a job's end
    confirmed = _cancel_steps(job_id, step, slurm_timeout) if job_id else True
    deadline = time.monotonic() + grace
    while (left := _marked_pids(marker)) and time.monotonic() < deadline:
        time.sleep(0.1)
    _signal_all(left, signal.SIGKILL)
    shutil.rmtree(directory, ignore_errors=True)  # what the processes wrote while stopping
    return confirmed


def _finish(job_id: str | None, step: str) -> None:
    """After a stop that Slurm did not confirm: cancel the step once Slurm answers."""
    deadline = time.monotonic() + FINISH_WITHIN
    while job_id and not _cancel_steps(job_id, step) and time.monotonic() < deadline:
        time.sleep(SLURM_TIMEOUT)


def _reap_orphaned_controller(marker: str, kernel: int) -> None:
    """If the controller died, end the helper processes it leaves, so engines stop getting pings."""
    controller = [pid for pid in _marked_pids(marker) if CONTROLLER.search(_read(pid, "cmdline"))]
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


def _job_ending(signum: int, frame: object) -> None:
    raise JobEnding


def _wait(marker: str) -> bytes:
    """Wait for the kernel's word: ``stop``, ``finish``, or nothing when it died."""
    kernel = os.getppid()
    while not select.select([sys.stdin], [], [], 1.0)[0]:
        _reap_orphaned_controller(marker, kernel)
    return os.read(sys.stdin.fileno(), 16).strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("marker", help="NAME=VALUE in the environment of every process to stop")
    parser.add_argument("directory")
    parser.add_argument("step", help="the name of the Slurm job step to cancel")
    parser.add_argument("job_id", nargs="?")
    args = parser.parse_args()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _job_ending)
    grace = 5.0
    try:
        word = _wait(args.marker)
    except JobEnding:
        word, grace = b"", 1.0  # Slurm's KillWait (30 s by default) is the limit
    if word == b"finish":
        with contextlib.suppress(JobEnding):  # the job ends: Slurm ends the step itself
            _finish(args.job_id, args.step)
    elif word != b"stop":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        clean_up(args.marker, args.directory, args.job_id, args.step, grace)


if __name__ == "__main__":
    main()
