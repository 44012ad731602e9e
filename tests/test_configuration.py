"""Site configuration takes effect: every trait docs/configuration.md documents, set in an
``ipython_config.py``, changes what a real IPython started with that file runs on the lab (the
argv of srun, mpirun, the controller and the engines, and what the engines and ranks see); a
magic option overrides a configured default only when the user gives it."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap

import psutil
import pytest

import ipcmagic
from ipcmagic.base.slurm import Allocation
from ipcmagic.cluster.ipcluster import IPCluster
from ipcmagic.cluster.plan import plan_engines
from tests.conftest import ROOT

#: runs in the configured IPython: start a cluster with the options of $START, print what runs
EVIDENCE = """
import json, os, sys, psutil, ipcmagic
ip = get_ipython()
ip.run_line_magic("load_ext", "ipcmagic")
ip.run_line_magic("ipcluster", "start " + os.environ["START"])
cluster = ipcmagic._magics.cluster
def argv(name):
    return next(p.cmdline() for p in psutil.Process().children(recursive=True) if p.name() == name)
def engine():
    import os, sys
    seen = ("SLURM_CPUS_PER_TASK", "SLURM_CPU_BIND", "SITE_")
    env = {k: v for k, v in os.environ.items() if k.startswith(seen)}
    argv = open("/proc/self/cmdline").read().split(chr(0))
    return {"env": env, "cpus": len(os.sched_getaffinity(0)), "argv": argv}
controller = cluster.cluster.controller.process
launcher = cluster.plan.launcher
print("EVIDENCE", json.dumps({
    "launcher": launcher,
    "runner": argv("srun" if launcher == "srun" else "mpirun") if launcher != "local" else [],
    "controller": controller.cmdline(),
    "controller_env": {k: v for k, v in controller.environ().items() if k.startswith("SITE_")},
    "interface": json.load(open(cluster.connection_file))["interface"],
    "curve": bool(json.load(open(cluster.connection_file)).get("curve_serverkey")),
    "engines": ipcmagic.client()[:].apply_sync(engine),
}), flush=True)
ip.run_line_magic("ipcluster", "stop")
"""


def ipython(tmp_path, config: str, code: str, job: list[str], **env: str) -> str:
    """Run ``code`` in IPython with ``config`` as its profile's ipython_config.py, as ``job``."""
    profile = tmp_path / "ipython" / "profile_default"
    profile.mkdir(parents=True, exist_ok=True)
    (profile / "ipython_config.py").write_text(f"import sys\n{textwrap.dedent(config)}")
    command = [
        sys.executable,
        "-m",
        "IPython",
        f"--ipython-dir={profile.parent}",
        "--HistoryManager.enabled=False",
    ]
    out = subprocess.run(
        [*job, *command, "-c", code],
        cwd=ROOT,
        env={**psutil.Process().environ(), **env},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


def evidence(tmp_path, config: str, start: str, job: list[str], **env: str) -> dict:
    out = ipython(tmp_path, config, EVIDENCE, job, START=start, **env)
    return json.loads(
        next(line for line in out.splitlines() if line.startswith("EVIDENCE ")).split(" ", 1)[1]
    )


def host_address() -> str:
    """An IPv4 address of this host other than loopback."""
    addresses = [
        a.address for nic in psutil.net_if_addrs().values() for a in nic if a.family == socket.AF_INET
    ]
    return next(a for a in addresses if not a.startswith("127."))


#: the kernel as a batch script runs it: in the allocation, not in a step (overlap = False works)
IN_ALLOCATION = ["salloc", "-Q", "-n", "4", "-J", "ipcmagic-config"]
IN_A_STEP = [*IN_ALLOCATION, "srun", "-n", "1"]

SRUN_CONFIG = """
c.IPCluster.timeout = 77
c.IPCluster.heartbeat_ms = 200
c.IPCluster.heartbeat_tolerance = 4.0
c.IPCluster.controller_ip = {address!r}
c.IPCluster.encrypt = False
c.IPCluster.engine_env = {{"SITE_NCCL": "site", "SITE_KEPT": "site"}}
c.SrunEngineSetLauncher.mpi = "pmix"
c.SrunEngineSetLauncher.overlap = False
c.SrunEngineSetLauncher.mpi_cmd = ["/usr/bin/srun"]
c.SrunEngineSetLauncher.mpi_args = ["--label"]
c.SrunEngineSetLauncher.cpus_per_engine = 2
c.SrunEngineSetLauncher.cpu_bind = "cores"
c.SrunEngineSetLauncher.engine_cmd = ["env", "SITE_ENGINE=1", sys.executable, "-m", "ipcmagic.engine"]
c.LocalControllerLauncher.controller_cmd = [
    "env", "SITE_CONTROLLER=1", sys.executable, "-m", "ipcmagic.controller"
]
"""


@pytest.fixture(scope="module")
def srun_configured(slurm, tmp_path_factory) -> dict:
    config = SRUN_CONFIG.format(address=host_address())
    return evidence(tmp_path_factory.mktemp("srun"), config, "-n 2", IN_ALLOCATION, SITE_KEPT="user")


@pytest.mark.parametrize(
    ("trait", "seen"),
    [
        ("mpi", "--mpi=pmix"),
        ("mpi_args", "--label"),
        ("cpus_per_engine", "--cpus-per-task=2"),
        ("cpu_bind", "--cpu-bind=cores"),
    ],
)
def test_srun_launcher_trait_reaches_srun(srun_configured, trait, seen):
    assert seen in srun_configured["runner"], srun_configured["runner"]


def test_srun_launcher_traits_take_effect(srun_configured):
    runner, engines = srun_configured["runner"], srun_configured["engines"]
    assert runner[0] == "/usr/bin/srun" and "--overlap" not in runner  # mpi_cmd, overlap
    assert all(e["env"]["SITE_ENGINE"] == "1" for e in engines)  # engine_cmd
    assert all(
        e["env"]["SITE_NCCL"] == "site" and e["env"]["SITE_KEPT"] == "user" for e in engines
    )  # engine_env
    assert {e["env"]["SLURM_CPUS_PER_TASK"] for e in engines} == {"2"}  # cpus_per_engine, as Slurm saw it
    assert {e["env"]["SLURM_CPU_BIND_TYPE"] for e in engines} == {"cores"}  # cpu_bind, as Slurm saw it


def test_cluster_traits_take_effect(srun_configured):
    engine_argv, controller = srun_configured["engines"][0]["argv"], srun_configured["controller"]
    assert "--IPEngine.wait_for_url_file=77" in engine_argv  # timeout
    assert "--HeartMonitor.period=200" in controller  # heartbeat_ms
    assert "--HeartMonitor.max_heartmonitor_misses=20" in controller  # heartbeat_tolerance: 4 s / 200 ms
    assert srun_configured["interface"] == f"tcp://{host_address()}"  # controller_ip
    assert not srun_configured["curve"]  # encrypt (on by default: tests/test_cluster_traffic.py)
    # controller_cmd; the kernel's variables, but not the engines' engine_env
    assert srun_configured["controller_env"] == {"SITE_CONTROLLER": "1", "SITE_KEPT": "user"}


def test_the_users_options_override_the_site_for_that_start_only(slurm, tmp_path):
    config = SRUN_CONFIG.format(address="127.0.0.1")
    seen = evidence(tmp_path, config, '-n 2 -c 1 --cpu-bind none --launcher-args "--verbose"', IN_ALLOCATION)
    runner = seen["runner"]
    assert "--cpus-per-task=1" in runner and "--cpu-bind=none" in runner
    assert runner.index("--label") < runner.index("--verbose")  # the site's extra options, then the user's


def test_gpus_per_engine_reaches_srun(slurm):
    """The lab has no GPUs in its single-node allocation: the plan's srun argv shows it."""
    from traitlets.config import Config

    cluster = IPCluster(config=Config({"SrunEngineSetLauncher": {"gpus_per_engine": 1}}))
    allocation = Allocation("1", ("vm",), (4,), 4)
    plan = cluster.plan_start(allocation, n=2)
    assert plan.traits["gpus_per_engine"] == 1 and plan.gpus == 0  # Slurm hands them out
    assert plan == cluster.plan_start(allocation, n=2, gpus_per_engine=None)
    assert plan_engines(allocation, n=2).traits["gpus_per_engine"] == 0


MPIRUN_CONFIG = """
c.IPCluster.launcher = "mpirun"
c.MpirunEngineSetLauncher.mpi_cmd = ["/usr/bin/mpirun"]
c.MpirunEngineSetLauncher.mpi_args = ["--mca", "btl", "self,vader,tcp"]
c.MpirunEngineSetLauncher.cpus_per_engine = 2
c.MpirunEngineSetLauncher.engine_cmd = ["env", "SITE_ENGINE=mpirun", sys.executable, "-m", "ipcmagic.engine"]
"""


def test_mpirun_launcher_traits_take_effect(slurm, mpirun, tmp_path):
    seen = evidence(tmp_path, MPIRUN_CONFIG, "-n 1", IN_A_STEP)
    runner = seen["runner"]
    assert seen["launcher"] == "mpirun" and runner[0] == "/usr/bin/mpirun"  # IPCluster.launcher, mpi_cmd
    assert runner[runner.index("--mca") : runner.index("--mca") + 3] == ["--mca", "btl", "self,vader,tcp"]
    assert runner[runner.index("--map-by") + 1] == "slot:PE=2"  # cpus_per_engine
    assert [e["cpus"] for e in seen["engines"]] == [2]  # ... bound to 2 cores
    assert seen["engines"][0]["env"]["SITE_ENGINE"] == "mpirun"  # engine_cmd


TORCHRUN_CONFIG = """
c.Torchrun.launcher = "srun"
c.Torchrun.python = {python!r}
c.Torchrun.grace = 1
c.Torchrun.env = {{"SITE_NCCL": "site", "SITE_KEPT": "site"}}
"""

#: a rank that ignores SIGINT and SIGTERM, so only the grace periods end it after the --timeout
TORCHRUN_CODE = """
SEEN = "import os, sys; env = os.environ; " \
    "print('seen', sys.executable, 'SLURM_STEP_ID' in env, env['SITE_NCCL'], env['SITE_KEPT'])"
STUBBORN = '''
import signal, time
for s in (signal.SIGINT, signal.SIGTERM):
    signal.signal(s, signal.SIG_IGN)
print('ignoring', flush=True)
time.sleep(60)
'''
ip = get_ipython()
ip.run_line_magic("load_ext", "ipcmagic")
ip.run_cell_magic("torchrun", "-n 1", SEEN)
import time
t = time.monotonic()
try:
    ip.run_cell_magic("torchrun", "-n 1 --launcher standalone --timeout 5", STUBBORN)
except Exception as e:
    print(type(e).__name__, "stopped after", round(time.monotonic() - t, 1))
"""


def test_torchrun_traits_take_effect(slurm, torch_installed, nothing_left, tmp_path):
    python = str(ROOT / ".venv" / "bin" / "python3")  # the kernel's is .venv/bin/python
    out = ipython(tmp_path, TORCHRUN_CONFIG.format(python=python), TORCHRUN_CODE, IN_A_STEP, SITE_KEPT="user")
    assert f"[0] seen {python} True site user" in out  # python; launcher srun: the rank runs in a step; env
    assert "TorchrunError stopped after " in out, out
    stopped = float(out.split("stopped after ", 1)[1].split()[0])
    assert 5 + 2 * 1 <= stopped < 5 + 2 * 3, out  # grace 1 s twice, not the default 3 s


def test_the_uenv_nccl_trap_is_named_at_each_start(ip, outside_slurm, monkeypatch, capfd):
    """CSCS: "Do not use NCCL_NET_PLUGIN=ofi with uenvs"; set by the kernel or the site's profile."""
    monkeypatch.setenv("UENV_MOUNT_LIST", "/capstor/store/prgenv.squashfs:/user-environment")
    monkeypatch.setattr(ipcmagic._magics.cluster, "engine_env", {"NCCL_NET_PLUGIN": "ofi"})
    ip.run_line_magic("ipcluster", "start -n 1")
    ip.run_line_magic("ipcluster", "stop")
    monkeypatch.setenv("NCCL_NET_PLUGIN", "ofi")
    ip.run_cell_magic("torchrun", "-n 1", "pass")
    warned = [line for line in capfd.readouterr().err.splitlines() if line.startswith("ipcmagic: warning:")]
    assert len(warned) == 2 and all("NCCL_NET_PLUGIN=ofi in a uenv" in line for line in warned), warned
