"""%ipcluster against real controllers and engines: local processes, mpirun and srun steps in Slurm."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
from IPython.core.error import UsageError

import ipcmagic
from ipcmagic.base.errors import ClusterError
from ipcmagic.cluster.status import cpu_ranges
from tests.conftest import our_processes, run_in_job


def ranks(rc) -> list[int]:
    return rc[:].apply_sync(lambda: __import__("mpi4py.MPI").MPI.COMM_WORLD.Get_rank())


def run_px(ip, code: str) -> None:
    ip.run_cell_magic("px", "", code)


def test_local_engines(ip, outside_slurm, capsys):
    ip.run_line_magic("ipcluster", "start -n 2")
    assert "2 local engines ready" in capsys.readouterr().out
    run_px(ip, "import os; pid = os.getpid()")
    rc = ipcmagic.client()
    assert rc.ids == [0, 1] and len(set(rc[:]["pid"])) == 2
    ip.run_line_magic("ipcluster", "stop")
    assert "Cluster stopped" in capsys.readouterr().out


def test_mpirun_engines_are_ranks(ip, outside_slurm, mpirun):
    ip.run_line_magic("ipcluster", "start -n 3 --launcher mpirun --launcher-args=--oversubscribe")
    rc = ipcmagic.client()
    assert rc.ids == [0, 1, 2] and ranks(rc) == rc.ids
    ip.run_line_magic("ipcluster", "stop")


def test_srun_engines_are_ranks_of_one_step(ip, in_allocation, capsys):
    ip.run_line_magic("ipcluster", "start -n 4")
    rc = ipcmagic.client()
    assert rc.ids == [0, 1, 2, 3] and ranks(rc) == rc.ids
    cluster_id = rc.cluster.cluster_id
    steps = subprocess.run(["squeue", "--steps", "-h", "-o", "%i %j"], capture_output=True, text=True).stdout
    assert f"{in_allocation['SLURM_JOB_ID']}." in steps and f"ipcmagic-{cluster_id}" in steps
    capsys.readouterr()
    ip.run_line_magic("ipcluster", "status")
    status = capsys.readouterr().out
    step = next(line.split()[0] for line in steps.splitlines() if f"ipcmagic-{cluster_id}" in line)
    assert f"cluster {cluster_id}: srun, 4 engines, Slurm step {step}, up " in status
    # no column that every engine leaves empty (CUDA_VISIBLE_DEVICES on a CPU node)
    assert status.splitlines()[1].split() == ["engine", "state", "rank", "host", "pid", "CPUs"]
    assert [line.split()[:3] for line in status.splitlines()[2:6]] == [
        [str(i), "alive", str(i)] for i in range(4)
    ]
    ip.run_line_magic("ipcluster", "stop")


def test_status_shows_affinity_and_gpus_as_text_and_html(ip, in_allocation, monkeypatch):
    # local engines pass it on (an srun step of this GPU-less job would get it emptied by Slurm, as
    # the lab's node has GPUs)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    ip.run_line_magic("ipcluster", "start -n 2 --launcher local")
    status = ipcmagic._magics.cluster.status()
    pids = ipcmagic.client()[:].apply_sync(os.getpid)
    affinity = ipcmagic.client()[:].apply_sync(lambda: sorted(__import__("os").sched_getaffinity(0)))
    assert [(row["pid"], row["gpus"]) for row in status.rows] == [(pid, "0,1") for pid in pids]
    assert [row["cpus"] for row in status.rows] == [cpu_ranges(set(cpus)) for cpus in affinity]
    html = status._repr_html_()
    assert "<th>CPUs</th>" in html and f"<td>{pids[1]}</td>" in html and "<td>0,1</td>" in html
    assert "CUDA_VISIBLE_DEVICES" in str(status).splitlines()[1]
    ip.run_line_magic("ipcluster", "stop")


def test_srun_with_cpus_and_mpi_type(ip, in_allocation):
    ip.run_line_magic("ipcluster", "start -n 2 -c 2 --mpi pmix")
    rc = ipcmagic.client()
    assert rc[:].apply_sync(lambda: os.environ["SLURM_CPUS_PER_TASK"]) == ["2", "2"]
    ip.run_line_magic("ipcluster", "stop")


@pytest.mark.parametrize(
    "line, message",
    [
        ("start -n 0", "at least 1"),
        ("start -n -1", "at least 1"),
        ("start -n abc", "give a number or gpu, not 'abc'"),
        ("start -n 9", "this allocation has 8"),
        ("start --launcher slurm", "invalid choice"),
        ("start --timeout 0", "argument --timeout"),
        ("launch", "invalid choice"),
        ("", "Say what to do"),
    ],
)
def test_bad_lines_raise_usage_errors(ip, in_allocation, line, message):
    with pytest.raises(UsageError, match=message):
        ip.run_line_magic("ipcluster", line)


def test_srun_outside_an_allocation(ip, outside_slurm):
    with pytest.raises(UsageError, match="needs a Slurm allocation"):
        ip.run_line_magic("ipcluster", "start -n 2 --launcher srun")


@pytest.mark.parametrize("launcher", ["srun", "mpirun"])
def test_launcher_not_on_path(ip, in_allocation, monkeypatch, launcher):
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable))
    with pytest.raises(UsageError, match=f"{launcher} is not on PATH"):
        ip.run_line_magic("ipcluster", f"start -n 2 --launcher {launcher}")


def test_failing_srun_fails_at_once_with_its_own_error(ip, in_allocation):
    tic = time.monotonic()
    with pytest.raises(ClusterError, match="(?s)srun launcher exited.*Invalid MPI type 'bogus'"):
        ip.run_line_magic("ipcluster", "start -n 2 --mpi bogus")
    assert time.monotonic() - tic < 10


def test_timeout_stops_everything(ip, in_allocation):
    # a "launcher" that never starts engines: the wait must end at --timeout, and it must be killed
    ip.config.SrunEngineSetLauncher.mpi_cmd = ["bash", "-c", "sleep 300", "never-registers"]
    try:
        tic = time.monotonic()
        message = r"0 of 2 engines registered within 2 s; the launcher printed nothing \(if they are still"
        with pytest.raises(ClusterError, match=message):
            ip.run_line_magic("ipcluster", "start -n 2 --timeout 2")
        assert time.monotonic() - tic < 15
    finally:
        del ip.config.SrunEngineSetLauncher["mpi_cmd"]


def test_start_options_never_change_the_users_config(ip, in_allocation):
    ip.config.SrunEngineSetLauncher.mpi_args = ["--cpu-bind=none"]  # as from ipython_config.py
    try:
        with pytest.raises(ClusterError):
            ip.run_line_magic("ipcluster", "start -n 1 --mpi bogus")
        assert dict(ip.config.SrunEngineSetLauncher) == {"mpi_args": ["--cpu-bind=none"]}
        ip.run_line_magic("ipcluster", "start -n 1")  # not with --mpi bogus left over
        ip.run_line_magic("ipcluster", "stop")
    finally:
        del ip.config.SrunEngineSetLauncher["mpi_args"]


@pytest.mark.parametrize("program", ["ipcmagic.controller", "ipyparallel.controller"])
def test_controller_program_is_ipcmagics_unless_configured(ip, outside_slurm, program):
    if program != "ipcmagic.controller":  # as a site's ipython_config.py would
        ip.config.LocalControllerLauncher.controller_cmd = [sys.executable, "-m", program]
    try:
        ip.run_line_magic("ipcluster", "start -n 1")
        assert [p for p in our_processes() if f" -m {program} " in p], our_processes()
        ip.run_line_magic("ipcluster", "stop")
    finally:
        ip.config.LocalControllerLauncher.pop("controller_cmd", None)


def test_start_twice_and_stop_twice(ip, outside_slurm, capsys):
    ip.run_line_magic("ipcluster", "start -n 1")
    with pytest.raises(UsageError, match="already running; stop it first"):
        ip.run_line_magic("ipcluster", "start -n 2")
    assert ipcmagic.client().ids == [0]
    ip.run_line_magic("ipcluster", "stop")
    capsys.readouterr()
    ip.run_line_magic("ipcluster", "stop")
    assert "No cluster is running" in capsys.readouterr().out
    with pytest.raises(RuntimeError, match="No cluster is running"):
        ipcmagic.client()


def test_clusters_are_isolated(nothing_left, outside_slurm):
    from ipcmagic.cluster.ipcluster import IPCluster
    from ipcmagic.cluster.plan import plan_engines

    first, second = IPCluster(), IPCluster()
    try:
        rc1 = first.start(plan_engines(None, n=1))
        rc2 = second.start(plan_engines(None, n=2))
        assert first.cluster.cluster_id != second.cluster.cluster_id
        assert first.cluster.profile_dir != second.cluster.profile_dir
        assert (rc1.ids, rc2.ids) == ([0], [0, 1])
        first.stop()
        assert rc2[:].apply_sync(lambda: 1) == [1, 1]
    finally:
        first.stop()
        second.stop()


def test_version(ip, capsys):
    ip.run_line_magic("ipcluster", "--version")
    assert capsys.readouterr().out.strip() == f"ipcmagic {ipcmagic.__version__}"


def test_import_outside_ipython_does_nothing():
    out = subprocess.run(
        [sys.executable, "-c", "import ipcmagic; print(ipcmagic.__version__)"], capture_output=True, text=True
    )
    assert out.returncode == 0 and out.stdout.strip() == ipcmagic.__version__


def test_import_inside_ipython_registers_the_magic():
    code = "import ipcmagic\nget_ipython().run_line_magic('ipcluster', '--version')\n"
    out = subprocess.run(
        [sys.executable, "-m", "IPython", "--quick", "-c", code], capture_output=True, text=True
    )
    assert out.returncode == 0 and f"ipcmagic {ipcmagic.__version__}" in out.stdout, out.stderr


@pytest.mark.parametrize("launcher", ["local", "srun"])
def test_exiting_ipython_stops_the_cluster(nothing_left, in_allocation, launcher):
    code = f"%load_ext ipcmagic\n%ipcluster start -n 2 --launcher {launcher}\nprint(ipcmagic_ok := 1)\n"
    out = subprocess.run(
        [sys.executable, "-m", "IPython", "--quick", "-c", code], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and "engines ready" in out.stdout, out.stdout + out.stderr


def test_pxwatch_follows_work_started_without_blocking(ip, in_allocation, capsys):
    from ipyparallel.error import CompositeError

    ip.run_line_magic("ipcluster", "start -n 2")
    ip.run_cell_magic(
        "px",
        "--noblock -o job",
        "import time\nfor i in range(3):\n    print('step', i, flush=True)\n    time.sleep(1)",
    )
    assert not ip.user_ns["job"].ready()
    ip.run_line_magic("pxwatch", "job")
    assert ip.user_ns["job"].ready()
    out = capsys.readouterr().out
    assert out.count("step 0") == 2 and out.count("step 2") == 2, out
    ip.user_ns["doubled"] = ipcmagic.client()[:].apply_async(lambda x: 2 * x, 21)
    assert ip.run_line_magic("pxwatch", "doubled") == [42, 42]
    ip.run_cell_magic("px", "--noblock -o bad", "1 / 0")
    with pytest.raises(CompositeError, match="ZeroDivisionError"):
        ip.run_line_magic("pxwatch", "bad")
    ip.user_ns["number"] = 1
    with pytest.raises(UsageError, match="'number' is not a parallel result"):
        ip.run_line_magic("pxwatch", "number")
    ip.run_line_magic("ipcluster", "stop")


@pytest.mark.parametrize("nanny", [True, False])
def test_engines_fork_their_nanny_or_none(ip, outside_slurm, nanny):
    """ipcmagic.engine forks the nanny at start; an engine without one ends it again."""
    ip.run_line_magic("ipcluster", f"start -n 1 --launcher-args=--IPEngine.enable_nanny={nanny}")
    engine = psutil.Process(ipcmagic.client()[0].apply_sync(os.getpid))
    assert "ipcmagic.engine" in " ".join(engine.cmdline())
    nannies = engine.children()
    assert len(nannies) == (1 if nanny else 0), nannies
    if nanny:  # its own session: a signal to the engine's process group passes it by
        assert os.getsid(nannies[0].pid) == nannies[0].pid != os.getsid(engine.pid)
    ip.run_line_magic("ipcluster", "stop")


@pytest.mark.parametrize("launcher", ["srun", "mpirun", "local"])
def test_a_stop_lets_the_engines_run_their_exit_handlers(ip, request, launcher):
    """Files an engine writes are flushed, the user's atexit functions run. srun alone would not
    let them: it answers the stop's SIGTERM by killing its step with SIGKILL."""
    request.getfixturevalue("in_allocation" if launcher == "srun" else "outside_slurm")
    if launcher == "mpirun":
        request.getfixturevalue("mpirun")
    extra = " --launcher-args=--oversubscribe" if launcher == "mpirun" else ""
    ip.run_line_magic("ipcluster", f"start -n 2 --launcher {launcher}{extra}")
    ip.run_cell_magic(
        "px",
        "",
        "import atexit, os, tempfile\n"
        "log = tempfile.NamedTemporaryFile('w', dir='/var/tmp', prefix='ipcmagic-exit-', delete=False)\n"
        "log.write('unflushed')\n"
        "atexit.register(lambda: open(log.name + '.atexit', 'w').close())",
    )
    logs = ipcmagic.client()[:]["log.name"]
    ip.run_line_magic("ipcluster", "stop")
    try:
        assert [Path(name).read_text() for name in logs] == ["unflushed"] * 2
        assert all(Path(f"{name}.atexit").exists() for name in logs)
    finally:
        for name in logs:
            Path(name).unlink(missing_ok=True)
            Path(f"{name}.atexit").unlink(missing_ok=True)


#: in a job of the 2-node lab: 4 engines, 2 on each node, each leaves a file from an exit handler
EXIT_HANDLERS_ON_TWO_NODES = """
import sys
from IPython.core.interactiveshell import InteractiveShell
ip = InteractiveShell.instance()
ip.run_line_magic("load_ext", "ipcmagic")
ip.run_line_magic("ipcluster", "start -n 4")
leave = f"open(f'{sys.argv[1]}/{{socket.gethostname()}}-{{os.getpid()}}', 'w').close()"
ip.run_cell_magic("px", "", f"import atexit, os, socket\\natexit.register(lambda: {leave})")
ip.run_line_magic("ipcluster", "stop")
"""


def test_a_stop_reaches_the_exit_handlers_on_other_nodes(two_nodes, nothing_left):
    """Engines elsewhere get their SIGTERM through Slurm (scancel --signal=TERM)."""
    with tempfile.TemporaryDirectory(dir="/var/tmp") as shared:  # both nodes see /var/tmp
        run_in_job(
            ["-N", "2", "--ntasks-per-node=2"],
            ["-N", "1", "-n", "1"],
            EXIT_HANDLERS_ON_TWO_NODES,
            two_nodes,
            shared,
        )
        left = sorted(name.split("-")[0] for name in os.listdir(shared))
    assert left == ["n1", "n1", "n2", "n2"]


STOCK_DEBUGGER = "import sys, ipyparallel.engine.app; print('ipykernel.debugger' in sys.modules)"


def test_engines_start_without_numpy_or_debugpy(ip, in_allocation, capsys):
    """Engines import neither numpy (ipyparallel's canning of ipcmagic's questions would) nor
    debugpy (ipykernel's debugger would) to start and answer status; user code has both. Before
    ipykernel 6.29.5, ipyparallel's engine imports the debugger itself: the stock behaviour stays."""
    stock = subprocess.run([sys.executable, "-c", STOCK_DEBUGGER], capture_output=True, text=True)
    ip.run_line_magic("ipcluster", "start -n 2")
    ip.run_line_magic("ipcluster", "status")
    rc = ipcmagic.client()
    rc[:].execute("import sys; heavy = sorted({'numpy', 'debugpy'} & set(sys.modules))", block=True)
    expected = ["debugpy"] if stock.stdout.strip() == "True" else []
    assert rc[:].pull("heavy", block=True) == [expected, expected]
    rc[:].execute("import debugpy, numpy; a = numpy.arange(3)", block=True)
    assert [a.tolist() for a in rc[:].pull("a", block=True)] == [[0, 1, 2]] * 2
    ip.run_line_magic("ipcluster", "stop")


def test_px_without_a_running_cluster_says_so(ip, outside_slurm):
    ip.run_line_magic("ipcluster", "start -n 1 --launcher local")
    ip.run_cell_magic("px", "", "x = 1")
    ip.run_line_magic("ipcluster", "stop")
    for run in (
        lambda: ip.run_cell_magic("px", "", "x"),
        lambda: ip.run_line_magic("px", "x"),
        lambda: ip.run_line_magic("autopx", ""),
        lambda: ip.run_line_magic("pxresult", ""),
    ):
        with pytest.raises(UsageError, match="No cluster is running; start one with %ipcluster start"):
            run()
    ip.run_line_magic("ipcluster", "start -n 1 --launcher local")  # and %px works again
    assert ip.run_cell("%px y = 2").success
    ip.run_line_magic("ipcluster", "stop")


def test_help_version_and_the_predecessors_spellings(ip, in_allocation, capsys):
    """ipcmagic 1.x's notebooks: %ipcluster --help, -v, --num_engines, --cpus_per_engine, bare --mpi."""
    for flag in ("--help", "-h"):
        ip.run_line_magic("ipcluster", flag)
        usage = capsys.readouterr().out
        assert usage.startswith("%ipcluster [-n N]") and "{start,stop,status,restart}" in usage
        for option in ("--launcher", "--cpus-per-engine", "--dask", "--mpi", "--timeout", "--launcher-args"):
            assert option in usage
    ip.run_line_magic("ipcluster", "-v")
    assert capsys.readouterr().out == f"ipcmagic {ipcmagic.__version__}\n"
    ip.run_line_magic("ipcluster", "start --num_engines 2 --cpus_per_engine 1 --mpi")
    assert len(ipcmagic.client().ids) == 2
    ip.run_line_magic("ipcluster", "stop")
