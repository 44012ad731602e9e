"""ipcmagic 1.2's users keep their notebooks: its example notebooks (tests/compat), a plain
``ipyparallel.Client()``, and ``--launcher mpirun`` with the kernel in a job step of the
allocation, on one node and two, with Open MPI's mpirun and MPICH's mpiexec."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import ipyparallel as ipp
import pytest

import ipcmagic
from ipcmagic import plain_client
from ipcmagic.base.slurm import as_allocation, env_prefix, step_env
from tests.conftest import MPICH_LIBMPI, ROOT, TWO_NODE_LAB, run_in_job
from tests.test_notebooks import NBVAL, run_nbval

COMPAT = ROOT / "tests" / "compat"
PREDECESSOR_NOTEBOOKS = ["non-mpi_cluster.ipynb", "osu_bw_mpi4py.ipynb", "ipp_dask_distribute.ipynb"]


@pytest.mark.parametrize("notebook", PREDECESSOR_NOTEBOOKS)
def test_predecessor_notebook_as_a_job_step(slurm, mpirun, nothing_left, notebook):
    salloc = ["salloc", "-Q", "-n", "4", "-J", "ipcmagic-compat"]
    run_nbval([*salloc, "srun", "-n", "1", *NBVAL, notebook], cwd=COMPAT)


@pytest.mark.parametrize("notebook", PREDECESSOR_NOTEBOOKS)
def test_predecessor_notebook_outside_slurm(mpirun, nothing_left, notebook):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    run_nbval([*NBVAL, notebook], env, COMPAT)


@pytest.mark.parametrize("notebook", ["osu_bw_mpi4py.ipynb", "ipp_dask_distribute.ipynb"])
def test_predecessor_mpirun_notebook_across_two_nodes(two_nodes, mpirun, nothing_left, notebook):
    """The kernel's step on the first node; mpirun puts rank 1 on the second."""
    salloc = ["salloc", "-Q", "-N", "2", "--ntasks-per-node=1", "-J", "ipcmagic-compat"]
    run_nbval([*salloc, "srun", "-N", "1", "-n", "1", *NBVAL, notebook], two_nodes, COMPAT)


#: a kernel that starts a cluster with the options in argv[1] and prints each engine as JSON
KERNEL = """
import json, os, socket, sys, ipcmagic
from IPython.core.interactiveshell import InteractiveShell
ip = InteractiveShell.instance()
ip.run_line_magic("load_ext", "ipcmagic")
ip.run_line_magic("ipcluster", "start " + sys.argv[1])
def engine():
    import os, socket
    from mpi4py import MPI
    return MPI.COMM_WORLD.Get_rank(), MPI.COMM_WORLD.Get_size(), socket.gethostname(), os.getpid()
for row in ipcmagic.client()[:].apply_sync(engine):
    print("engine", json.dumps(row))
ip.run_line_magic("ipcluster", "stop")
print("stopped")
"""


def engines_in_job(salloc: list[str], srun: list[str], options: str, env: dict[str, str]) -> list[list]:
    """Start a cluster from a kernel that runs as a job step; the engines' (rank, size, host, pid)."""
    out = run_in_job(salloc, srun, KERNEL, env, options)
    assert "stopped" in out, out
    return [json.loads(line.split(" ", 1)[1]) for line in out.splitlines() if line.startswith("engine ")]


def test_mpirun_engines_fill_the_allocation_from_a_job_step(slurm, mpirun, nothing_left):
    """mpirun used to see the kernel's one-task step: "There are not enough slots available"."""
    rows = engines_in_job(
        ["-n", "4", "-J", "ipcmagic-mpirun"], ["-n", "1"], "--launcher mpirun", dict(os.environ)
    )
    assert sorted(row[0] for row in rows) == [0, 1, 2, 3] and {row[1] for row in rows} == {4}, rows


@pytest.mark.parametrize("mpi", ["openmpi", "mpich"])
def test_mpirun_engines_span_nodes_while_the_kernels_step_holds_every_cpu(
    two_nodes, mpirun, mpich_libmpi, nothing_left, mpi
):
    """The kernel's step holds all CPUs of both nodes; mpirun's own srun for its daemons on the
    other node waited forever without --overlap (measured: Open MPI and MPICH alike)."""
    env = {**two_nodes}
    if mpi == "mpich":
        env.update(PATH=f"{MPICH_LIBMPI.parents[1] / 'bin'}:{env['PATH']}", MPI4PY_LIBMPI=mpich_libmpi)
    done = TWO_NODE_LAB / f"kernel-done-{os.getpid()}-{mpi}"  # seen on both nodes, unlike /tmp
    script = f"""
import os, sys, time
if os.environ["SLURM_PROCID"] != "0":  # the step's second task only holds the second node's CPUs
    while not os.path.exists({str(done)!r}):
        time.sleep(0.2)
    sys.exit()
try:
{KERNEL.replace(chr(10), chr(10) + "    ")}
finally:
    open({str(done)!r}, "w").close()
"""
    try:
        out = run_in_job(
            ["-N", "2", "--ntasks-per-node=2", "-J", "ipcmagic-mpirun"],
            ["-n", "2", "-c", "2"],
            script,
            env,
            "--launcher mpirun",
        )
    finally:
        done.unlink(missing_ok=True)
    rows = [json.loads(line.split(" ", 1)[1]) for line in out.splitlines() if line.startswith("engine ")]
    assert sorted(row[0] for row in rows) == [0, 1, 2, 3] and {row[1] for row in rows} == {4}, out
    assert {row[2] for row in rows} == {"n1", "n2"}, out


#: a kernel in a PMIx step that tries srun plugins its Open MPI cannot use
WRONG_MPI_KERNEL = """
from IPython.core.interactiveshell import InteractiveShell
ip = InteractiveShell.instance()
ip.run_line_magic("load_ext", "ipcmagic")
for plugin in ("none", "pmi2"):
    try:
        ip.run_line_magic("ipcluster", f"start -n 2 --mpi {plugin} --timeout 30")
    except Exception as e:
        print(plugin, type(e).__name__)
print("kernel alive")
"""


def test_a_wrong_mpi_plugin_fails_the_start_not_the_kernel(slurm, nothing_left):
    """The engines inherited the kernel step's PMIX_* variables, joined its PMIx namespace, and
    Slurm cancelled the kernel's own step (exit 137)."""
    out = run_in_job(
        ["-n", "4", "-J", "ipcmagic-wrong-mpi"], ["-n", "1", "--mpi=pmix"], WRONG_MPI_KERNEL, dict(os.environ)
    )
    said = [line for line in out.splitlines() if line.startswith(("none", "pmi2", "kernel"))]
    assert said == ["none ClusterError", "pmi2 ClusterError", "kernel alive"], out


def test_steps_and_engines_lose_the_kernels_step_identity():
    env = {
        "SLURM_JOB_ID": "7",
        "SLURM_STEP_ID": "0",
        "SLURM_PROCID": "0",
        "PMIX_NAMESPACE": "slurm.pmix.7.0",
        "PMIX_SERVER_URI41": "pmix-server.1;tcp4://127.0.0.1:1",
        "PMI_FD": "5",
        "PMIX_MCA_gds": "hash",  # a site's PMIx tunable stays
        "PMI_NO_FORK": "1",  # and so do Cray's PMI knobs
    }
    assert step_env(env) == {"SLURM_JOB_ID": "7", "PMIX_MCA_gds": "hash", "PMI_NO_FORK": "1"}
    prefix = env_prefix(env, {"SLURM_OVERLAP": "1"})
    assert prefix[0] == "env" and prefix[-1] == "SLURM_OVERLAP=1"
    assert {p.split("=", 1)[1] for p in prefix[1:-1]} == {
        "SLURM_STEP_ID",
        "SLURM_PROCID",
        "PMIX_NAMESPACE",
        "PMIX_SERVER_URI41",
        "PMI_FD",
    }


def test_mpirun_sees_the_allocation_as_the_batch_script_does():
    env = {
        "SLURM_JOB_ID": "7",
        "SLURM_JOB_NODELIST": "n[1-2]",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_JOB_CPUS_PER_NODE": "2(x2)",
    }
    assert as_allocation(env) == {
        "SLURM_OVERLAP": "1",
        "SLURM_MPI_TYPE": "none",
        "SLURM_NODELIST": "n[1-2]",
        "SLURM_NNODES": "2",
        "SLURM_TASKS_PER_NODE": "2(x2)",
    }
    assert as_allocation({"HOME": "/h"}) == {}


#: a second kernel with its own cluster: prints its engines' pids, stops when told on stdin
SECOND_KERNEL = """
import json, os, ipyparallel as ipp
from IPython.core.interactiveshell import InteractiveShell
ip = InteractiveShell.instance()
ip.run_line_magic("load_ext", "ipcmagic")
ip.run_line_magic("ipcluster", "start -n 2 --launcher local")
client = ipp.Client()
print("pids", json.dumps(sorted(client[:].apply_sync(os.getpid))), flush=True)
client.close()
input()
ip.run_line_magic("ipcluster", "stop")
"""


def engine_pids(client: ipp.Client) -> list[int]:
    return sorted(client[:].apply_sync(os.getpid))


def test_a_plain_client_reaches_this_kernels_cluster_and_only_that(ip, outside_slurm):
    ip.run_line_magic("ipcluster", "start -n 2 --launcher local")
    second = subprocess.Popen(
        [sys.executable, "-c", SECOND_KERNEL], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        said = next(line for line in second.stdout if line.startswith("pids "))
        theirs = json.loads(said.split(" ", 1)[1])
        ours = engine_pids(ipcmagic.client())
        for client in (ipp.Client(), ipp.Client(profile="default")):
            with client:
                assert engine_pids(client) == ours and not set(ours) & set(theirs)
    finally:
        second.communicate("\n", timeout=60)
    assert second.returncode == 0


#: another process of the user on this node: a plain Client() fails (ipyparallel's default
#: profile has no cluster), the connection file that %ipcluster status shows connects
ELSEWHERE = """
import os, sys, ipyparallel as ipp
try:
    ipp.Client(timeout=1)
except OSError as e:
    print("plain:", str(e).splitlines()[0])
with ipp.Client(sys.argv[1]) as client:
    print("file:", sorted(client[:].apply_sync(os.getpid)))
"""


def test_another_process_connects_with_the_file_status_shows(ip, outside_slurm, capsys):
    ip.run_line_magic("ipcluster", "start -n 2 --launcher local")
    ip.run_line_magic("ipcluster", "status")
    shown = capsys.readouterr().out
    path = ipcmagic._magics.cluster.connection_file
    assert f"ipyparallel.Client({path!r})" in shown and oct(os.stat(path).st_mode & 0o777) == "0o600"
    out = subprocess.run([sys.executable, "-c", ELSEWHERE, path], capture_output=True, text=True, timeout=60)
    assert [line for line in out.stdout.splitlines() if line.startswith(("plain:", "file:"))] == [
        "plain: Connection file '~/.ipython/profile_default/security/ipcontroller-client.json' not found.",
        f"file: {engine_pids(ipcmagic.client())}",
    ], out.stderr


@pytest.mark.parametrize(
    ("args", "kwargs", "default"),
    [
        ((), {}, True),
        ((), {"profile": "default", "timeout": 5}, True),
        (("/x/ipcontroller-client.json",), {}, False),
        ((), {"profile": "other"}, False),
        ((), {"profile_dir": "/x"}, False),
        ((), {"cluster_id": "abc"}, False),
        ((), {"url_file": "/x.json"}, False),
    ],
)
def test_which_clients_are_plain(args, kwargs, default):
    assert plain_client._connects_by_default(args[0] if args else None, kwargs) is default
