"""Container sessions, on the labs' stand-in for pyxis and CSCS's Container Engine (dev/containers,
docs/containers.md): the kernel runs in the batch script of a job started with ``--environment
EDF.toml``, inside the stand-in PyTorch image, from a venv on top of it that holds ipcmagic (as
CSCS's docs recommend); the host's Python has none of the image's packages, so an engine or rank
that did not enter the container could not start. What ``%ipcluster``, ``%%torchrun`` and
``launch`` start, and where it runs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from ipcmagic.base.containers import SPANK_PREFIXES, missing_slurm_files
from tests.conftest import MAGICS_KERNEL, ROOT, batch_job, require, slurm_confs, tagged

pytestmark = pytest.mark.usefixtures("nothing_left")

CONTAINERS = Path("/opt/ipcmagic-containers")
IMAGE = CONTAINERS / "images" / "pytorch"
PLUGIN = CONTAINERS / "lib" / "spank_pyxis.so"
#: the user's files, mounted in the container as a CSCS user's scratch (the 2-node lab's nodes see /var/tmp)
SCRATCH = Path("/var/tmp/ipcmagic-container-tests")

#: where a process runs: the image, its Python's prefix, the first of PATH, its venv, the EDF's mark,
#: RANK, host
WHERE = """
def where():
    import os, socket, sys
    image = "/etc/ipcmagic-image"
    return {
        "image": open(image).read().strip() if os.path.exists(image) else None,
        "prefix": sys.prefix,
        "path": os.environ["PATH"].split(":")[0],
        "venv": os.environ.get("VIRTUAL_ENV"),
        "edf": os.environ.get("WHICH_EDF"),
        "rank": os.environ.get("RANK"),
        "host": socket.gethostname(),
    }
"""


def edf(path: Path, *mounts: str, env: dict[str, str] | None = None) -> Path:
    """An EDF of the stand-in image with ``mounts`` (and the scratch), as a user writes one."""
    lines = [
        f'image = "{IMAGE}"',
        "writable = true",
        f"mounts = {json.dumps([*mounts, str(SCRATCH)])}",
        f'workdir = "{SCRATCH}"',
    ]
    if env:
        lines += ["[env]", *(f'{name} = "{value}"' for name, value in env.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


def slurm_mounts(conf: str) -> list[str]:
    """What srun in the container needs from the lab, as /etc/slurm etc. at CSCS."""
    return [str(Path(conf).parent), str(PLUGIN)]


@pytest.fixture(scope="session")
def scratch(slurm) -> Path:
    """The user's scratch with a venv on top of the image, made inside the container as a user
    makes it there (``python -m venv --system-site-packages``), holding ipcmagic from this tree."""
    require(
        PLUGIN.exists() and IMAGE.exists(), f"no container stand-in in {CONTAINERS}: dev/containers/build"
    )
    for conf in slurm_confs():
        plugstack = Path(conf).parent / "plugstack.conf"
        loaded = plugstack.exists() and str(PLUGIN) in plugstack.read_text()
        require(
            loaded, f"{plugstack} has no {PLUGIN}: restart the lab (dev/slurmlab stop; dev/slurmlab start)"
        )
    shutil.rmtree(SCRATCH, ignore_errors=True)
    (SCRATCH / "src").mkdir(parents=True)
    files = subprocess.run(
        ["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    for name in files.decode().split("\0"):
        if name and (ROOT / name).is_file() and not name.startswith(("examples/", "docs/")):
            (SCRATCH / "src" / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, SCRATCH / "src" / name)
    kernel_edf = edf(SCRATCH / "kernel.toml", *slurm_mounts(os.environ["SLURM_CONF"]))
    venv = SCRATCH / "venv"
    make = (
        f"python -m venv --system-site-packages --without-pip {venv} && {venv}/bin/python -m pip install -q "
    )
    make += f"--no-deps --no-build-isolation {SCRATCH / 'src'}"
    done = subprocess.run(
        ["srun", "-Q", "-n", "1", f"--environment={kernel_edf}", "bash", "-c", make],
        cwd=SCRATCH,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (SCRATCH / "kernel.py").write_text(WHERE + MAGICS_KERNEL)
    yield SCRATCH
    shutil.rmtree(SCRATCH, ignore_errors=True)


def run_kernel(
    env: dict[str, str], options: list[str], kernel_edf: Path, *lines: str, batch: bool = False
) -> str:
    """The magics' ``lines`` in a kernel in a new job in the container of ``kernel_edf``, its venv
    activated as the kernel's spec does it (CSCS: ``ipykernel install --env PATH ...``); its output.
    ``batch``: as the job's batch script, as CSCS's spawner runs JupyterLab; else as a one-task
    job step, as batchspawner's does."""
    venv = SCRATCH / "venv"
    with tempfile.NamedTemporaryFile("w", dir=SCRATCH, suffix=".sh", delete=False) as job:
        job.write(f"#!/bin/bash\nexport PATH={venv}/bin:$PATH VIRTUAL_ENV={venv}\n")
        job.write(f'exec python {SCRATCH}/kernel.py "$@"\n')
    options = ["-J", "ipcmagic-container", f"--environment={kernel_edf}", *options]
    try:
        if batch:
            return batch_job(options, job.name, env, SCRATCH, *lines)
        salloc = ["salloc", "-Q", *options, "srun", "-n", "1", "bash", job.name, *lines]
        done = subprocess.run(salloc, env=env, cwd=SCRATCH, capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout
    finally:
        os.unlink(job.name)


def in_the_kernels_container(places: list[dict]) -> None:
    """Each place is the image's, with the kernel's venv active (not the image's PATH)."""
    venv = str(SCRATCH / "venv")
    for place in places:
        assert (place["image"], place["prefix"], place["path"], place["venv"]) == (
            "pytorch",
            venv,
            f"{venv}/bin",
            venv,
        )


@pytest.fixture
def one_node(slurm) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") or k == "SLURM_CONF"}


def test_a_kernel_in_a_container_runs_everything_there(one_node, scratch):
    """%ipcluster's engines, %%torchrun's and launch's ranks run in the kernel's container with the
    kernel's venv active, though the image's ENV sets PATH; %%torchrun --environment X runs in X
    (the job's own container options would make srun refuse it) and says so."""
    kernel_edf = scratch / "kernel.toml"
    other = edf(scratch / "other.toml", *slurm_mounts(one_node["SLURM_CONF"]), env={"WHICH_EDF": "other"})
    out = run_kernel(
        one_node,
        ["-n", "4"],
        kernel_edf,
        "%ipcluster start -n 2",
        "%ipcluster stop",
        "%%torchrun -n 2",
        "launch(nproc=2)",
        f"%%torchrun -n 2 --environment {other} --python /usr/bin/python3",
    )
    assert "RAISED" not in out, out
    (kernel,) = tagged(out, "KERNEL")
    in_the_kernels_container([kernel])
    assert kernel["rank"] == "0", kernel  # enroot's PyTorch hook, as at CSCS: never passed on to ranks
    (engines,) = tagged(out, "ENGINES")
    (launched,) = tagged(out, "LAUNCHED")
    places = tagged(out, "PLACE")
    assert len(engines) == 2 and len(launched) == 2 and len(places) == 4, out
    in_the_kernels_container([*engines, *launched, *places[:2]])
    assert sorted(p["rank"] for p in places[:2]) == sorted(p["rank"] for p in launched) == ["0", "1"], out
    assert [(p["image"], p["prefix"], p["edf"], p["venv"]) for p in places[2:]] == [
        ("pytorch", "/usr", "other", None)
    ] * 2
    said = f"%%torchrun: the ranks run in the container of {other}, not this kernel's ({kernel_edf})"
    assert said in out, out


def test_the_stand_in_refuses_what_pyxis_refuses(one_node, scratch):
    """In a job with --environment: an srun with another EDF is refused as pyxis refuses it, the same
    EDF again is not; an EDF that does not exist fails srun at once; a step that does not enter the
    container cannot run the kernel's Python (the host has neither its interpreter nor its packages); a mount
    whose source is missing fails the task; an srun's container is not passed on to the srun of its
    tasks (Slurm's way); --container-image, --container-mounts and --container-workdir work as pyxis's."""
    other = edf(scratch / "other.toml", *slurm_mounts(one_node["SLURM_CONF"]))
    steps = {  # $OUT: without the job's container
        "other": f"srun -n 1 --environment={other} true",
        "same": f"srun -n 1 --environment={scratch / 'kernel.toml'} cat /etc/ipcmagic-image",
        "missing": "$OUT srun -n 1 --environment=/nonexistent.toml true",
        "outside": f"$OUT srun -n 1 {scratch}/venv/bin/python -c 'import ipyparallel'",
        "no source": f"$OUT srun -n 1 --container-image={IMAGE} --container-mounts=/nonexistent true",
        "step only": f"$OUT srun -n 1 --environment={scratch}/kernel.toml sh -c 'env | grep -c OPTION_||:'",
        "image": f"$OUT srun -n 1 --container-image={IMAGE} --container-mounts={scratch}:/data:ro "
        "--container-workdir=/data sh -c 'cat /etc/ipcmagic-image; pwd; ls /work'",
    }
    script = f"OUT='env {' '.join(f'-u {prefix}environment' for prefix in SPANK_PREFIXES)}'\n"
    script += "".join(
        f"echo '== {name}'; {command} 2>&1; echo \"rc=$?\"\n" for name, command in steps.items()
    )
    (scratch / "steps.sh").write_text(script)
    job = [
        "salloc",
        "-Q",
        "-n",
        "1",
        f"--environment={scratch / 'kernel.toml'}",
        "bash",
        str(scratch / "steps.sh"),
    ]
    out = subprocess.run(job, env=one_node, cwd=scratch, capture_output=True, text=True, timeout=120).stdout
    said = {name: (text, rc) for name, text, rc in re.findall(r"== (.*)\n((?:.*\n)*?)rc=(\d+)", out)}
    assert "pyxis: --environment specified multiple times" in said["other"][0] and said["other"][1] != "0", (
        out
    )
    assert said["same"] == ("pytorch\n", "0"), out
    assert "pyxis: --environment /nonexistent.toml: No such file or directory" in said["missing"][0], out
    # a venv made in the container runs the image's python (/usr/local/bin/python), not the host's
    assert said["outside"][1] != "0" and "venv/bin/python: No such file" in said["outside"][0], out
    assert "pyxis: mount /nonexistent: /nonexistent does not exist" in said["no source"][0], out
    assert said["step only"] == ("0\n", "0"), out  # an srun's options stay with its step (docs/containers.md)
    image, _ = said["image"]
    assert {"pytorch", "/data"} <= set(image.splitlines()) and "cannot access '/work'" in image, out


@pytest.mark.parametrize("lacking", ["configuration", "plugin"])
def test_a_container_without_slurms_files_fails_at_once(one_node, scratch, lacking):
    """A container without the mounts srun needs: %ipcluster start and %%torchrun raise a UsageError
    naming them before any srun (which would retry its configuration for 60 s, then fail)."""
    mounts = [] if lacking == "configuration" else slurm_mounts(one_node["SLURM_CONF"])[:1]
    bare = edf(scratch / f"without-{lacking}.toml", *mounts)
    out = run_kernel(one_node, ["-n", "2"], bare, "%ipcluster start -n 1", "%%torchrun -n 1")
    missing = str(Path(one_node["SLURM_CONF"]).parent) if lacking == "configuration" else str(PLUGIN)
    said = (
        f"RAISED UsageError This kernel runs in a container ({bare}) without what srun needs from the host: "
        f'{missing}. Add it to the EDF\'s mounts (at CSCS: mounts = ["/etc/slurm", '
    )
    assert out.count(said) == 2 and "PLACE" not in out, out


def test_a_kernel_in_a_container_on_two_nodes(two_nodes, scratch):
    """The 2-node lab, the kernel in the batch script (CSCS's layout): engines and ranks on both
    nodes, each in the kernel's container with its venv."""
    kernel_edf = edf(scratch / "kernel-2n.toml", *slurm_mounts(two_nodes["SLURM_CONF"]))
    out = run_kernel(
        two_nodes,
        ["-N", "2", "--ntasks-per-node=2"],
        kernel_edf,
        "%ipcluster start -n 4",
        "%ipcluster stop",
        "%%torchrun -n 1 --nnodes 2",
        batch=True,
    )
    assert "RAISED" not in out, out
    (engines,) = tagged(out, "ENGINES")
    places = tagged(out, "PLACE")
    in_the_kernels_container([*engines, *places])
    assert sorted(e["host"] for e in engines) == ["n1", "n1", "n2", "n2"], out
    assert sorted(p["host"] for p in places) == ["n1", "n2"], out


def test_what_srun_needs_is_read_from_the_slurm_configuration(tmp_path):
    """The configuration's directory where it is missing; else the plugin stack's required plugins
    and included files that do not exist (not optional ones, not patterns, not comments); nothing
    outside a container."""
    plugstack = tmp_path / "plugstack.conf"
    plugstack.write_text(
        f"required {tmp_path}/a.so arg=1\noptional {tmp_path}/b.so\ninclude {tmp_path}/c.conf\n"
        f"include {tmp_path}/d/*.conf\n# required {tmp_path}/e.so\nrequired {plugstack}\n"
    )
    conf = tmp_path / "slurm.conf"
    conf.write_text(f"ClusterName=x\nPlugStackConfig={plugstack}\n")
    container = {SPANK_PREFIXES[0] + "environment": "x.toml", "SLURM_CONF": str(conf)}
    assert missing_slurm_files(container) == [f"{tmp_path}/a.so", f"{tmp_path}/c.conf"]
    assert missing_slurm_files({**container, "SLURM_CONF": "/nonexistent/slurm.conf"}) == ["/nonexistent"]
    assert missing_slurm_files({"SLURM_CONF": "/nonexistent/slurm.conf"}) == []
