"""The front door in a real browser: log in to JupyterHub, which submits JupyterLab as a Slurm job
(batchspawner's SlurmSpawner, default batch script), then use ipcmagic from JupyterLab as a user does,
and stop the server from the Hub. Asserts what the user sees and that nothing is left behind.

Needs the hub labs (`dev/hublab start`, `SLURMLAB_NODES=2 dev/hublab start`; dev/test starts them),
Debian's chromium and Playwright (dev/setup). Screenshots of every step go to $IPCMAGIC_SHOTS (default:
a new temp dir); with $IPCMAGIC_DOCS_IMG set (dev/screenshots), small cropped ones for the docs go there.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from tests.conftest import ROOT, TWO_NODE_LAB, require

pytestmark = [pytest.mark.frontdoor, pytest.mark.timeout(300)]

CHROMIUM = "/usr/bin/chromium"
# Debian's chromium, headless; no network: nothing to sync, update or fetch
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ONE_NODE_LAB = Path(os.environ.get("SLURM_CONF", "/tmp/slurmlab-ipcmagic/etc/slurm.conf")).parent.parent
TIMINGS: dict[str, float] = {}

MPI_CELL = """%%px
from mpi4py import MPI
comm = MPI.COMM_WORLD
print(f"rank {comm.Get_rank()} of {comm.Get_size()}: allreduce(rank) = {comm.allreduce(comm.Get_rank())}")"""
TORCH_CELL = """%%torchrun {args}
import socket
import torch, torch.distributed as dist
dist.init_process_group("gloo")
t = torch.tensor([dist.get_rank() + 1.0]); dist.all_reduce(t)
print(dist.get_rank(), socket.gethostname(), t.item())"""
SLEEPING_TORCHRUN = """%%torchrun -n 2
import os, time
print("rank", os.environ["RANK"], "sleeping 60 s", flush=True)
time.sleep(60)"""
SLEEPING_PX = """%%px
import time
print("sleeping 60 s", flush=True)
time.sleep(60)"""
DYING_PX = """%%px
import os, time
from mpi4py import MPI
time.sleep(3)  # long enough for ipyparallel's progress bar
if MPI.COMM_WORLD.rank == 3:
    os._exit(3)  # rank 3, on the other node, fails while the others wait for it
MPI.COMM_WORLD.Barrier()"""
#: issue 33's cell: rank 1 raises while the others wait for it in a barrier (ipyparallel#435)
RAISING_PX = """%%px
from mpi4py import MPI
if MPI.COMM_WORLD.rank == 1:
    raise ValueError('rank one is unhappy')
MPI.COMM_WORLD.Barrier()"""
#: the cells of journey.ipynb, by what the test calls them
JOURNEY = {
    "load": "%load_ext ipcmagic",
    "start": "%ipcluster start -n 4",
    "mpi": MPI_CELL,
    "rank raises": RAISING_PX,
    "status": "%ipcluster status",
    "torchrun": TORCH_CELL.format(args="-n 2"),
    "long torchrun": SLEEPING_TORCHRUN,
    "long px": SLEEPING_PX,
    "status again": "%ipcluster status",
}
#: the cells of multinode.ipynb (the 2-node lab: a --nodes=2 job, 2 tasks per node)
MULTINODE = {
    "load": "%load_ext ipcmagic",
    "start": "%ipcluster start",
    "status": "%ipcluster status",
    "torchrun": TORCH_CELL.format(args="--nnodes 2 -n 1"),
    "rank dies": DYING_PX,
    "restart": "%ipcluster restart",
    "long torchrun": SLEEPING_TORCHRUN,
}
#: %%px on whole GPU nodes: where each rank runs, its GPU, and the uenv its step kept
WHERE_PX = """%%px
import os, socket
from mpi4py import MPI
env = os.environ
print(f"rank {MPI.COMM_WORLD.rank} of {MPI.COMM_WORLD.size} on {socket.gethostname()}: "
      f"GPU {env['CUDA_VISIBLE_DEVICES']}, {env['SLURM_CPUS_PER_TASK']} CPUs, {env['UENV_VIEW']}")"""
#: the cells of whole_nodes.ipynb: CSCS's layout (JupyterLab in the batch script of whole GPU nodes)
WHOLE_NODES = {
    "load": "%load_ext ipcmagic",
    "start": "%ipcluster start",
    "px": WHERE_PX,
    "status": "%ipcluster status",
    "watch": "%ipcluster status --watch",
    "busy": "%%px\nimport time\nt = time.time()\nwhile time.time() - t < 8:\n    pass",
    "stop": "%ipcluster stop",
    "torchrun": TORCH_CELL.format(args="-n gpu --nnodes {nodes}"),
}
#: where a cell runs: the image, the Python (a venv's prefix), the first of PATH, the EDF's marker
WHERE_CONTAINER = """import os, sys
image = open("/etc/ipcmagic-image").read().strip()
path, edf = os.environ["PATH"].split(":")[0], os.environ.get("WHICH_EDF")
print("in", image, "from", sys.prefix, "PATH", path, "EDF", edf)"""
CONTAINER = {
    "load": "%load_ext ipcmagic",
    "start": "%ipcluster start -n 2",
    "px": "%%px\n" + WHERE_CONTAINER,
    "torchrun": "%%torchrun -n 2\n" + WHERE_CONTAINER,
    "other": "%%torchrun -n 1 --environment other.toml --python /usr/bin/python3\n" + WHERE_CONTAINER,
    "stop": "%ipcluster stop",
}
#: processes of the user's server itself: the batch script, its srun, the server, its kernels
SERVER_PROCESS = re.compile(r"slurm_script|batchspawner-singleuser|jupyterhub-singleuser|ipykernel_launcher")


class HubLab:
    """One running `dev/hublab` (its env.sh: URL, user, home, Slurm lab) and what its user left."""

    def __init__(self, lab: Path, layout: str = ""):
        """``layout``: "" for batchspawner's (its user), "CSCS" for CSCS's, "CE" for a container
        session's (its home: its scratch, the session's workdir; its kernel: a venv's)."""
        env_file = lab / "hub" / "env.sh"
        require(env_file.exists(), f"no hub lab on {lab} (dev/hublab start; SLURMLAB_NODES=2 for 2 nodes)")
        found = dict(re.findall(r"(\w+)=(\S+)", env_file.read_text()))
        prefix = f"HUBLAB_{layout}_" if layout else "HUBLAB_"
        self.url, self.user, self.home = (
            found["HUBLAB_URL"],
            found[f"{prefix}USER"],
            Path(found[f"{prefix}HOME"]),
        )
        self.kernel = found.get(f"{prefix}KERNEL", "python3")
        self.token = found["HUBLAB_TOKEN"]
        self.lab = lab
        self.env = {**os.environ, "SLURM_CONF": found["SLURM_CONF"]}

    def squeue(self, *args: str) -> list[str]:
        out = subprocess.run(
            ["squeue", "-h", "-u", self.user, *args], env=self.env, capture_output=True, text=True, timeout=30
        )
        return out.stdout.splitlines()

    def jobs(self) -> list[str]:
        return self.squeue("-o", "%i %j %T")

    def steps(self) -> list[str]:
        return [s for s in self.squeue("--steps", "-o", "%i %j") if "ipcmagic-" in s]

    def processes(self) -> list[str]:
        found = []
        for proc in psutil.process_iter(["pid", "username", "cmdline", "status"]):
            if proc.info["username"] == self.user and proc.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(f"{proc.info['pid']} {' '.join(proc.info['cmdline'] or [])}")
        return found

    def kernel_environ(self) -> dict[str, str]:
        """The environment of one of the user's kernels."""
        for proc in psutil.process_iter(["username", "cmdline"]):
            if proc.info["username"] == self.user and "ipykernel_launcher" in " ".join(proc.info["cmdline"]):
                return proc.environ()
        raise AssertionError(f"no kernel of {self.user} runs")

    def temp_dirs(self) -> list[str]:
        """ipcmagic's dirs of this user in /tmp of every node (2 nodes: each has its own /tmp)."""
        tmps = [Path("/tmp"), *self.lab.glob("nodetmp/*")]
        return [str(p) for tmp in tmps for p in tmp.glob("ipcmagic-*") if p.owner() == self.user]

    def leftovers(self, server_running: bool, timeout: float = 15.0) -> dict[str, list[str]]:
        """What is left after a bounded wait: with the server running, anything but the server."""
        deadline = time.monotonic() + timeout
        while True:
            expired = time.monotonic() > deadline
            procs = self.processes()
            if server_running:
                procs = [p for p in procs if not SERVER_PROCESS.search(p)]
            left = {"processes": procs, "steps": self.steps(), "temp dirs": self.temp_dirs()}
            if not server_running:
                left["jobs"] = self.jobs()
            if not any(left.values()) or expired:
                return {k: v for k, v in left.items() if v}
            time.sleep(0.3)

    def stop_server(self) -> None:
        """Through the hub (a job cancelled behind its back would still count as a running server)."""
        request = urllib.request.Request(
            f"{self.url}/hub/api/users/{self.user}/server",
            method="DELETE",
            headers={"Authorization": f"token {self.token}"},
        )
        try:
            urllib.request.urlopen(request, timeout=60)
        except urllib.error.HTTPError as e:
            if e.code != 400:  # 400: no server running
                raise

    def clean(self) -> None:
        """Before and after a test: no server, job, process or file of the user, whatever a test left
        (later tests check that nothing of ipcmagic is left on this machine)."""
        self.stop_server()
        # JupyterLab would reopen the last test's notebooks, each with a kernel, at the next login
        shutil.rmtree(self.home / ".jupyter" / "lab" / "workspaces", ignore_errors=True)
        self.leftovers(server_running=False, timeout=15)
        for proc in psutil.process_iter(["username"]):
            if proc.info["username"] == self.user:
                proc.kill()
        for path in self.temp_dirs():
            shutil.rmtree(path, ignore_errors=True)

    def write_notebook(self, name: str, cells: dict[str, str]) -> None:
        nb = {
            "cells": [
                {
                    "cell_type": "code",
                    "execution_count": None,
                    "id": f"c{i}",
                    "metadata": {},
                    "outputs": [],
                    "source": src,
                }
                for i, src in enumerate(cells.values())
            ],
            "metadata": {
                "kernelspec": {
                    "display_name": self.kernel,
                    "language": "python",
                    "name": self.kernel,
                }
            },
            "nbformat": 4,
            "nbformat_minor": 5,
        }
        self.put(name, json.dumps(nb, indent=1))

    def put(self, name: str, text: str) -> None:
        path = self.home / name
        path.write_text(text)
        shutil.chown(path, self.user, self.user)


class Shots:
    """Screenshots of each step (full page or one cell), numbered in the order taken."""

    def __init__(self, directory: Path, prefix: str):
        self.dir, self.prefix, self.n = directory, prefix, 0
        self.docs = Path(os.environ["IPCMAGIC_DOCS_IMG"]) if os.environ.get("IPCMAGIC_DOCS_IMG") else None

    def __call__(self, page, name: str, element=None, doc: str | None = None, height: int | None = None):
        """The page, or one element of it, at most `height` px of it; also into the docs as `doc`."""
        self.n += 1
        paths = [self.dir / f"{self.prefix}-{self.n:02d}-{name}.png"]
        if doc and self.docs:
            paths.append(self.docs / doc)
        for path in paths:
            if element is None:
                page.screenshot(path=str(path))
            elif height is None:
                element.screenshot(path=str(path))
            else:
                box = element.bounding_box()
                page.screenshot(path=str(path), clip={**box, "height": min(box["height"], height)})


@pytest.fixture(scope="module")
def shots_dir() -> Path:
    path = Path(os.environ.get("IPCMAGIC_SHOTS") or tempfile.mkdtemp(prefix="frontdoor-shots-"))
    path.mkdir(parents=True, exist_ok=True)
    yield path
    (path / "timings.json").write_text(json.dumps(TIMINGS, indent=1))
    print(f"\nfront door: screenshots in {path}; timings {TIMINGS}")


@pytest.fixture(scope="module")
def browser():
    require(importlib.util.find_spec("playwright") is not None, "playwright not installed (dev/setup)")
    require(os.path.exists(CHROMIUM), f"no {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, shots_dir, request):
    """A fresh browser context; tests ask for their hub lab first, so that its cleaning (which stops
    the server) comes after the last screenshot."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(60_000)
    yield page
    page.screenshot(path=str(shots_dir / f"{request.node.name}-last.png"))  # what a failure left on screen
    context.close()


def hub_lab(lab: Path, layout: str = ""):
    hub = HubLab(lab, layout)
    hub.clean()
    yield hub
    hub.clean()


@pytest.fixture
def hub1():
    yield from hub_lab(ONE_NODE_LAB)


@pytest.fixture
def hub2():
    yield from hub_lab(TWO_NODE_LAB)


@pytest.fixture(params=[1, 2], ids=["1node", "2nodes"])
def cscs_hub(request):
    """CSCS's layout (dev/hublab), on 1 node and on 2."""
    yield from hub_lab(ONE_NODE_LAB if request.param == 1 else TWO_NODE_LAB, "CSCS")


@pytest.fixture
def container_hub():
    """A container session (dev/hublab's ipcmce1: CSCS's layout, #SBATCH --environment)."""
    yield from hub_lab(ONE_NODE_LAB, "CE")


# --- what a user does in the browser -------------------------------------------------------------


def log_in(page, hub: HubLab, shot: Shots) -> float:
    """Hub login page → 'Sign in' → spawn (a Slurm job) → JupyterLab; returns the seconds it took."""
    page.goto(f"{hub.url}/hub/login")
    page.fill("#username_input", hub.user)
    page.fill("#password_input", "any")
    shot(page, "login")
    started = time.monotonic()
    page.click("#login_submit")
    page.wait_for_url(re.compile(r".*/user/[^/]+/lab.*"), timeout=90_000)
    # loaded: the file browser lists the user's home
    page.locator(".jp-DirListing-item").first.wait_for(state="attached", timeout=60_000)
    return time.monotonic() - started


def open_notebook(page, hub: HubLab, name: str) -> None:
    """?reset: a fresh workspace, so that this notebook is the current one (menus act on it)."""
    page.goto(f"{hub.url}/user/{hub.user}/lab/tree/{name}?reset")
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
    wait_kernel_idle(page)


def wait_kernel_idle(page) -> None:
    """The status bar's "Python 3 (ipykernel) | Idle": the kernel is connected (not "Connecting")."""
    page.locator(".jp-StatusBar-TextItem", has_text="| Idle").wait_for(timeout=60_000)


def watch_prompts(prompts) -> None:
    """Mark each prompt once it shows [*]: a kernel restart keeps the old [n], so a number alone does
    not say that this run has finished."""
    prompts.evaluate_all(
        """els => els.forEach(e => { e.seenBusy = false;
             new MutationObserver(() => { if (e.textContent.includes('*')) e.seenBusy = true; })
               .observe(e, {subtree: true, childList: true, characterData: true}); })"""
    )


def wait_done(page, prompts, timeout: float = 120) -> None:
    page.wait_for_function(
        "els => els.every(e => e.seenBusy && /\\[\\d+\\]/.test(e.textContent))",
        arg=prompts.element_handles(),
        timeout=timeout * 1000,
    )


def cell(page, index: int):
    return page.locator(".jp-Notebook .jp-Cell").nth(index)


def run(page, index: int, wait: bool = True, timeout: float = 120):
    """Shift+Enter in a cell; waits for it to finish unless wait=False. Returns the cell."""
    c = cell(page, index)
    prompt = c.locator(".jp-InputPrompt")
    watch_prompts(prompt)
    c.locator(".jp-InputArea-editor").click()
    page.keyboard.press("Shift+Enter")
    if wait:
        wait_done(page, prompt, timeout)
    return c


def output(c) -> str:
    return c.locator(".jp-OutputArea").inner_text()


def wait_output(page, c, pattern: str, count: int = 1, timeout: float = 60) -> None:
    page.wait_for_function(
        "([el, pattern, count]) => (el.textContent.match(new RegExp(pattern, 'g')) || []).length >= count",
        arg=[c.locator(".jp-OutputArea").element_handle(), pattern, count],
        timeout=timeout * 1000,
    )


def interrupt(page, c) -> float:
    """The toolbar's interrupt button; returns the seconds until the cell finished."""
    started = time.monotonic()
    page.locator("[data-command='notebook:interrupt-kernel']").first.click()
    wait_done(page, c.locator(".jp-InputPrompt"), timeout=60)
    return time.monotonic() - started


def restart_kernel(page) -> None:
    page.locator("[data-command='notebook:restart-kernel']").first.click()
    page.locator(".jp-Dialog-button.jp-mod-accept").click()
    wait_kernel_idle(page)


def menu(page, *path: str) -> None:
    page.locator(f".lm-MenuBar-itemLabel:text-is('{path[0]}')").click()
    for item in path[1:]:
        page.locator(f".lm-Menu-itemLabel:text-is('{item}')").click()


def stop_my_server(page, shot: Shots, doc: str | None) -> float:
    """File > Hub Control Panel > Stop My Server; returns the seconds until 'Start My Server' shows."""
    page.locator(".lm-MenuBar-itemLabel:text-is('File')").click()
    with page.context.expect_page() as new_page:
        page.locator(".lm-Menu-itemLabel:text-is('Hub Control Panel')").click()
    panel = new_page.value
    panel.wait_for_selector("#stop")
    shot(panel, "hub-control-panel", panel.locator("body"), doc=doc, height=150)
    started = time.monotonic()
    panel.click("#stop")
    # '#start' is both the "My Server" link and, once stopped, "Start My Server": wait for #stop to go
    panel.wait_for_selector("#stop", state="hidden", timeout=60_000)
    panel.wait_for_function("() => /Start My Server/.test(document.querySelector('#start').textContent)")
    took = time.monotonic() - started
    shot(panel, "server-stopped")
    return took


# --- what the user must see ----------------------------------------------------------------------


def status_table(c) -> list[dict[str, str]]:
    """The rows of %ipcluster status's table, as {column: text}."""
    table = c.locator(".jp-OutputArea table").first
    columns = [th.inner_text().strip() for th in table.locator("thead th").all()]
    rows = [
        [td.inner_text().strip() for td in tr.locator("td").all()] for tr in table.locator("tbody tr").all()
    ]
    return [dict(zip(columns, row, strict=True)) for row in rows]


def assert_status(c, engines: int) -> list[dict[str, str]]:
    rows = status_table(c)
    assert len(rows) == engines and all(r["state"] == "alive" for r in rows), rows
    empty = [col for col in rows[0] if not any(r[col] for r in rows)]
    assert not empty, f"columns empty for every engine: {empty}"
    return rows


def assert_started(c, engines: int) -> float:
    """The cell says 'N srun engines ready in X s' and its progress bar ended full; returns X."""
    text = output(c)
    ready = re.search(rf"{engines} srun engines ready in ([\d.]+) s", text)
    assert ready, text
    bar = c.locator(".widget-hprogress .progress-bar")  # ipywidgets' (tqdm's) bar
    assert bar.count() == 1, text
    full = bar.evaluate("e => [e.style.width, e.classList.contains('progress-bar-success')]")
    assert full == ["100%", True], text
    assert re.search(rf"{engines}/{engines}\s+engines", text), text  # tqdm pads with figure spaces
    return float(ready[1])


def assert_tidy_interrupt(text: str, ranks: int) -> None:
    """An interrupted %%torchrun: the ranks' own lines stay, srun's chatter and ipcmagic's frames go,
    and one line says what happened."""
    lines = [line for line in text.splitlines() if line.strip()]
    assert any(line.startswith("[0] rank 0 sleeping") for line in lines), text
    assert not [line for line in lines if line.startswith("srun:") or "CANCELLED" in line], text
    frames = re.findall(r"\b(queue|threading|magics|torchrun)\.py\b", text)
    assert not frames, f"frames of {set(frames)} in:\n{text}"
    assert lines[-1] == f"KeyboardInterrupt: %%torchrun interrupted; {ranks} ranks stopped", text


def assert_nothing_left(hub: HubLab, server_running: bool, when: str) -> None:
    left = hub.leftovers(server_running)
    assert not left, f"{when}: left behind: {left}"


# --- the journeys --------------------------------------------------------------------------------


def quickstart(page, hub: HubLab, shot: Shots) -> None:
    """examples/quickstart.ipynb, Run > Run All Cells: every cell runs, no error output."""
    open_notebook(page, hub, "quickstart.ipynb")
    # it is shipped with outputs: cleared, each prompt shows [n] again only once its cell has run
    menu(page, "Edit", "Clear Outputs of All Cells")
    started = time.monotonic()
    menu(page, "Run", "Run All Cells")
    page.wait_for_function(
        r"""() => [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')]
                  .every(e => /\[\d+\]/.test(e.textContent))""",
        timeout=120_000,
    )
    TIMINGS["quickstart Run All"] = time.monotonic() - started
    shot(page, "quickstart")
    errors = page.locator("[data-mime-type='application/vnd.jupyter.error']")
    assert errors.count() == 0, errors.first.inner_text()


def start_cluster(page, shot: Shots, index: int, engines: int) -> float:
    c = run(page, index, wait=False)
    c.locator(".widget-hprogress").wait_for(timeout=30_000)
    shot(page, "ipcluster-starting", c)
    wait_done(page, c.locator(".jp-InputPrompt"))
    shot(page, "ipcluster-started", c, doc="ipcluster-start.png")
    return assert_started(c, engines)


def interrupted(page, shot: Shots, index: int, magic: str, ranks: int):
    """Run cell `index` (a sleeping %%torchrun or %%px), interrupt it from the toolbar once every
    rank sleeps; return the cell. The cell must finish within 5 s."""
    c = run(page, index, wait=False)
    wait_output(page, c, "sleeping 60 s", count=ranks)
    took = interrupt(page, c)
    TIMINGS[f"interrupt {magic}"] = took
    name = magic.strip("%") + "-interrupted"
    shot(page, name, c, doc=f"{name}.png")
    assert took < 5
    return c


def interrupted_torchrun(page, hub: HubLab, shot: Shots, index: int) -> None:
    c = interrupted(page, shot, index, "%%torchrun", ranks=2)
    assert_tidy_interrupt(output(c), ranks=2)
    left = [p for p in hub.processes() if "torch" in p] + [s for s in hub.steps() if "torchrun" in s]
    assert not left, f"after the interrupt: {left}"


def busy_stop(page, hub: HubLab, shot: Shots, index: int, doc: str | None = None) -> None:
    """Stop My Server while a cluster runs and cell `index`, a %%torchrun, sleeps: everything goes."""
    c = run(page, index, wait=False)
    wait_output(page, c, "sleeping 60 s", count=2)
    TIMINGS[f"{hub.user}: Stop My Server -> Start My Server shown"] = stop_my_server(page, shot, doc)
    assert_nothing_left(hub, server_running=False, when="after Stop My Server")


def test_journey(hub1, page, shots_dir):
    """The whole journey of a user on one node, from the hub's login page to Stop My Server."""
    shot = Shots(shots_dir, "1node")
    hub1.put("quickstart.ipynb", (ROOT / "examples" / "quickstart.ipynb").read_text())
    hub1.write_notebook("journey.ipynb", JOURNEY)
    cells = list(JOURNEY)
    began = time.monotonic()
    TIMINGS["login -> JupyterLab"] = log_in(page, hub1, shot)
    shot(page, "lab-loaded")
    quickstart(page, hub1, shot)
    # batchspawner's default batch script, without a site's workaround: the job's srun export list
    # reaches the kernel, and ipcmagic copes with it
    assert hub1.kernel_environ().get("SLURM_EXPORT_ENV", "ALL") != "ALL"
    open_notebook(page, hub1, "journey.ipynb")
    run(page, cells.index("load"))
    TIMINGS["%ipcluster start as shown"] = shown = start_cluster(page, shot, cells.index("start"), 4)
    assert shown <= 3
    c = run(page, cells.index("mpi"))
    shot(page, "px-allreduce", c, doc="px-allreduce.png")
    assert sorted(re.findall(r"rank (\d) of 4: allreduce\(rank\) = 6", output(c))) == ["0", "1", "2", "3"]
    rank_raises(page, shot, cells.index("rank raises"))
    c = run(page, cells.index("mpi"))  # the next %%px runs, on engines restarted for it
    assert sorted(re.findall(r"rank (\d) of 4: allreduce\(rank\) = 6", output(c))) == ["0", "1", "2", "3"]
    c = run(page, cells.index("status"))
    shot(page, "ipcluster-status", c, doc="ipcluster-status.png")
    assert_status(c, 4)
    ipyparallel_panel(page, shot)
    c = run(page, cells.index("torchrun"))
    shot(page, "torchrun", c, doc="torchrun.png")
    assert sorted(re.findall(r"\[(\d)\] \1 \S+ 3\.0", output(c))) == ["0", "1"], output(c)
    interrupted_torchrun(page, hub1, shot, cells.index("long torchrun"))
    interrupted(page, shot, cells.index("long px"), "%%px", ranks=4)
    assert_status(run(page, cells.index("status again")), 4)
    restart_kernel(page)
    assert_nothing_left(hub1, server_running=True, when="after a kernel restart")
    shot(page, "restarted")
    for name in ("load", "start"):
        run(page, cells.index(name))
    busy_stop(page, hub1, shot, cells.index("long torchrun"), doc="hub-control-panel.png")
    TIMINGS["whole journey (1 node)"] = time.monotonic() - began


def ipyparallel_panel(page, shot: Shots) -> None:
    """ipyparallel's own sidebar panel, while ipcmagic's cluster runs (docs/site-admins.md shows it)."""
    tab = page.locator(".lm-TabBar-tab[title*='IPython Parallel']")
    if tab.count():
        tab.first.click()
        page.wait_for_timeout(1000)
        shot(page, "ipyparallel-panel", page.locator(".jp-LabShell"), doc="ipyparallel-panel.png", height=240)
        tab.first.click()


def test_two_nodes(hub2, page, shots_dir):
    """A --nodes=2 job: engines and %%torchrun ranks on both nodes; Stop My Server leaves nothing."""
    shot = Shots(shots_dir, "2nodes")
    hub2.write_notebook("multinode.ipynb", MULTINODE)
    cells = list(MULTINODE)
    TIMINGS["login -> JupyterLab (2 nodes)"] = log_in(page, hub2, shot)
    open_notebook(page, hub2, "multinode.ipynb")
    run(page, cells.index("load"))
    TIMINGS["%ipcluster start as shown (2 nodes)"] = start_cluster(page, shot, cells.index("start"), 4)
    c = run(page, cells.index("status"))
    shot(page, "ipcluster-status", c, doc="multinode-status.png")
    assert {r["host"] for r in assert_status(c, 4)} == {"n1", "n2"}
    c = run(page, cells.index("torchrun"))
    shot(page, "torchrun", c)
    assert sorted(re.findall(r"\[(\d)\] \1 (n\d) 3\.0", output(c))) == [("0", "n1"), ("1", "n2")], output(c)
    rank_dies(page, shot, cells.index("rank dies"))
    assert re.search(r"4 engines restarted in [\d.]+ s", output(run(page, cells.index("restart"))))
    busy_stop(page, hub2, shot, cells.index("long torchrun"))


def test_whole_gpu_nodes_as_at_cscs(cscs_hub, page, shots_dir):
    """JupyterLab in the batch script of whole nodes with 4 GPUs each (firecrestspawner's layout):
    %ipcluster start gives an engine per GPU, each on its own, in the activated software
    environment; %%torchrun -n gpu a rank per GPU; Stop My Server leaves nothing."""
    hub, nodes = cscs_hub, 2 if cscs_hub.lab == TWO_NODE_LAB else 1
    shot = Shots(shots_dir, f"cscs-{nodes}node")
    cells = {**WHOLE_NODES, "torchrun": WHOLE_NODES["torchrun"].format(nodes=nodes)}
    hub.write_notebook("whole_nodes.ipynb", cells)
    TIMINGS[f"login -> JupyterLab (CSCS, {nodes} node)"] = log_in(page, hub, shot)
    open_notebook(page, hub, "whole_nodes.ipynb")
    kernel = hub.kernel_environ()  # in the batch script, after the command's activation
    assert "SLURM_STEP_ID" not in kernel and "SLURM_NTASKS" not in kernel and kernel["UENV_VIEW"], kernel
    run(page, list(cells).index("load"))
    c = run(page, list(cells).index("start"), timeout=180)
    shot(page, "ipcluster-started", c, doc=f"whole-nodes-start-{nodes}.png" if nodes == 2 else None)
    TIMINGS[f"%ipcluster start, one engine per GPU ({nodes} node)"] = assert_started(c, 4 * nodes)
    assert "(one per GPU of this job)" in output(c), output(c)
    c = run(page, list(cells).index("px"))
    shot(page, "px-where", c, doc="whole-nodes-px.png" if nodes == 2 else None)
    places = re.findall(
        r"rank (\d+) of (\d+) on (\S+): GPU (\d), (\d+) CPUs, ipcmagic-lab:default", output(c)
    )
    hosts = ["n1", "n2"] if nodes == 2 else [os.uname().nodename.split(".")[0]]  # the 1-node lab's: this host
    cpus = "2"  # 8 CPUs of each node's, shared by its 4 GPUs
    expected = [(str(r), str(4 * nodes), hosts[r // 4], str(r % 4), cpus) for r in range(4 * nodes)]
    assert sorted(places, key=lambda p: int(p[0])) == expected, output(c)
    assert_status(run(page, list(cells).index("status")), 4 * nodes)
    watched(page, shot, list(cells).index("watch"), 4 * nodes, doc=nodes == 2)
    c = run(page, list(cells).index("torchrun"), timeout=180)
    shot(page, "torchrun", c)
    total = float(sum(range(1, 4 * nodes + 1)))
    ranks = re.findall(rf"\[(\d+)\] \1 (\S+) {total}", output(c))
    assert sorted(int(rank) for rank, _ in ranks) == list(range(4 * nodes)), output(c)
    assert f"%%torchrun: {4 * nodes} ranks (one per GPU of" in output(c), output(c)
    TIMINGS[f"CSCS {nodes} node: Stop My Server"] = stop_my_server(page, shot, None)
    assert_nothing_left(hub, server_running=False, when="after Stop My Server")


def watched(page, shot: Shots, index: int, engines: int, doc: bool) -> None:
    """%ipcluster status --watch (cell ``index``), then a %%px cell that keeps every engine busy
    for 8 s: the table shows each engine working; %ipcluster stop ends it."""
    shown = run(page, index).locator(".jp-OutputArea")
    shown.locator("table").wait_for()
    run(page, index + 1, wait=False)
    # a refresh while they work (each a new table): each engine's CPU % over 10 (8 engines of the
    # 2-node lab share this machine's 2 cores)
    page.wait_for_function(
        f"""el => {{ const rows = [...el.querySelectorAll('table tbody tr')];
                   return rows.length == {engines} && rows.every(r => +r.cells[4].textContent > 10); }}""",
        arg=shown.element_handle(),
        timeout=30_000,
    )
    shot(page, "watch", cell(page, index), doc="watch.png" if doc else None)
    wait_done(page, cell(page, index + 1).locator(".jp-InputPrompt"))
    run(page, index + 2)  # %ipcluster stop
    output_of_watch = cell(page, index).locator(".jp-OutputArea")
    page.wait_for_function(
        "el => el.textContent.includes('The cluster was stopped.')", arg=output_of_watch.element_handle()
    )
    shot(page, "watch-stopped", cell(page, index))


def rank_raises(page, shot: Shots, index: int) -> None:
    """Issue 33: the cell fails at once, rank 1's traceback first, one line on the others last."""
    started = time.monotonic()
    c = run(page, index)
    TIMINGS["%%px with rank 1 raising before a barrier"] = time.monotonic() - started
    shot(page, "px-rank-raised", c, doc="px-rank-raised.png")
    lines = [line for line in output(c).splitlines() if line.strip()]
    assert "ValueError: rank one is unhappy" in lines, lines
    assert lines[-1].startswith("ipcmagic: engine 1 (MPI rank 1, pid "), lines
    assert lines[-1].endswith("so all 4 engines are being restarted: their variables are gone."), lines


def rank_dies(page, shot: Shots, index: int) -> None:
    """Rank 3 exits on n2 during a barrier: one failure block, ending in what happened, the advice once
    (tests/test_engine_loss.py measures the time to failure)."""
    started = time.monotonic()
    c = run(page, index)
    TIMINGS["%%px with a rank dying after 3 s"] = time.monotonic() - started
    shot(page, "px-rank-died", c, doc="px-rank-died.png")
    lines = [line for line in output(c).splitlines() if line.strip()]
    assert lines[-1].startswith("ipcmagic: engine 3 (MPI rank 3, pid "), lines
    assert " on n2) exited with code 3; srun then stopped the others: engine 0 " in lines[-1], lines
    assert sum("%ipcluster restart" in line for line in lines) == 1, lines
    assert c.locator(".widget-hprogress").count() <= 1, lines


def test_a_container_session(container_hub, page, shots_dir):
    """JupyterLab in the container of the user's EDF (the labs' stand-in for CSCS's Container Engine),
    the kernel from a venv on top of the image: engines and ranks run in the same container with that
    venv active; %%torchrun --environment runs in another and says so; Stop My Server leaves nothing."""
    hub, shot = container_hub, Shots(shots_dir, "container")
    hub.write_notebook("container.ipynb", CONTAINER)
    TIMINGS["login -> JupyterLab (container)"] = log_in(page, hub, shot)
    open_notebook(page, hub, "container.ipynb")
    kernel = hub.kernel_environ()
    edf, venv = str(hub.home / "pytorch.toml"), str(hub.home / "venv")
    assert (
        kernel["SLURM_SPANK__SLURM_SPANK_OPTION_pyxis_environment"] == edf and kernel["VIRTUAL_ENV"] == venv
    )
    run(page, list(CONTAINER).index("load"))
    TIMINGS["%ipcluster start -n 2 (container)"] = assert_started(
        run(page, list(CONTAINER).index("start")), 2
    )
    here = f"in pytorch from {venv} PATH {venv}/bin EDF None"
    c = run(page, list(CONTAINER).index("px"))
    shot(page, "px-in-container", c, doc="container-px.png")
    assert output(c).count(here) == 2, output(c)
    c = run(page, list(CONTAINER).index("torchrun"))
    assert output(c).count(here) == 2, output(c)
    c = run(page, list(CONTAINER).index("other"))
    shot(page, "torchrun-other-edf", c, doc="container-other-edf.png")
    assert "[0] in pytorch from /usr PATH /usr/local/bin EDF other" in output(c), output(c)
    said = f"%%torchrun: the ranks run in the container of other.toml, not this kernel's ({edf})"
    assert said in output(c), output(c)
    run(page, list(CONTAINER).index("stop"))
    TIMINGS["container: Stop My Server"] = stop_my_server(page, shot, None)
    assert_nothing_left(hub, server_running=False, when="after Stop My Server")
