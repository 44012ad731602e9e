"""The notebook's values in and results out of distributed PyTorch runs (issue 15): ``%%torchrun
--push/--pull``, ``ipcmagic.torchrun.launch`` and the exchange between them and the ranks."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time

import pytest
from IPython.core.error import UsageError

from ipcmagic.base.addresses import LOOPBACK
from ipcmagic.torchrun import RankError, TorchrunError, TorchrunInterrupted, launch
from ipcmagic.torchrun.exchange import Exchange
from tests.conftest import run_in_job

PUSH_PULL = """%%torchrun -n 2 --push lr,data --pull seen
import os, socket
seen = (int(os.environ["RANK"]), lr * 2, sum(data), socket.gethostname())
"""


@pytest.mark.parametrize("launcher", ["standalone", "srun"])
def test_push_and_pull(ip, in_allocation, torch_installed, launcher):
    ip.user_ns.update(lr=0.5, data=list(range(4)))
    ip.run_cell(PUSH_PULL.replace("-n 2", f"-n 2 --launcher {launcher}")).raise_error()
    assert [row[:3] for row in ip.user_ns["seen"]] == [(0, 1.0, 6), (1, 1.0, 6)]


PUSH_PULL_ACROSS_NODES = """
import json
from IPython.core.interactiveshell import InteractiveShell
ip = InteractiveShell.instance()
ip.run_line_magic("load_ext", "ipcmagic")
ip.user_ns.update(lr=0.5, data=list(range(4)))
ip.run_cell(%r.replace("-n 2", "--nnodes 2 -n 1")).raise_error()
print("SEEN", json.dumps(ip.user_ns["seen"]))
from ipcmagic.torchrun import launch
print("LAUNCHED", json.dumps(launch(__import__("socket").gethostname, nnodes=2)))
"""


def test_push_pull_and_launch_across_nodes_without_a_shared_file_system(
    two_nodes, torch_installed, nothing_left
):
    """The 2-node lab's nodes have their own /tmp."""
    out = run_in_job(
        ["-N", "2", "--ntasks-per-node=1", "-J", "ipcmagic-push"],
        ["-n", "1"],
        PUSH_PULL_ACROSS_NODES % PUSH_PULL,
        two_nodes,
    )
    said = dict(line.split(" ", 1) for line in out.splitlines() if line.startswith(("SEEN", "LAUNCHED")))
    assert json.loads(said["SEEN"]) == [[0, 1.0, 6, "n1"], [1, 1.0, 6, "n2"]]
    assert json.loads(said["LAUNCHED"]) == ["n1", "n2"], "launch, too"
    peaks = re.findall(r"^%%torchrun: peak memory by rank: RSS \d+ MiB, \d+ MiB; GPU none used$", out, re.M)
    assert len(peaks) == 2, out  # each run's last line, from the ranks on both nodes


def test_push_and_pull_say_what_is_wrong_before_anything_starts(ip, outside_slurm, torch_installed):
    with pytest.raises(UsageError, match="--push missing: the notebook has no variable missing"):
        ip.run_cell_magic("torchrun", "-n 2 --push missing", "pass")
    ip.user_ns["lock"] = threading.Lock()
    with pytest.raises(UsageError, match=r"--push lock cannot be sent to the ranks \(TypeError: cannot pick"):
        ip.run_cell_magic("torchrun", "-n 2 --push lock", "pass")
    with pytest.raises(UsageError, match="--pull '1x' is not a variable name"):
        ip.run_cell_magic("torchrun", "-n 2 --pull 1x", "pass")
    with pytest.raises(UsageError, match="work with %%torchrun cells"):
        ip.run_line_magic("torchrun", "--pull x script.py")


def test_a_rank_that_does_not_define_a_pulled_name_is_named(ip, in_allocation, torch_installed):
    code = "import os\nif os.environ['RANK'] == '0':\n    x = 1"
    with pytest.raises(TorchrunError, match="--pull x: rank 1 did not define x"):
        ip.run_cell_magic("torchrun", "-n 2 --pull x", code)
    assert "x" not in ip.user_ns


def test_a_pulled_value_that_cannot_be_sent_is_named(ip, in_allocation, torch_installed):
    with pytest.raises(
        TorchrunError, match=r"rank 0's values cannot be sent to the kernel \(TypeError: cannot"
    ):
        ip.run_cell_magic("torchrun", "-n 1 --pull lock", "import threading\nlock = threading.Lock()")


NOTEBOOK_FUNCTION = """
import os
def scaled(x, factor=1):
    if x < 0:
        raise ValueError(f"negative x on rank {os.environ['RANK']}")
    return int(os.environ["RANK"]), x * factor, os.environ["WORLD_SIZE"]
"""


@pytest.mark.parametrize("launcher", ["standalone", "srun"])
def test_launch_a_notebook_function(ip, in_allocation, torch_installed, launcher):
    """A function of __main__, shipped by value; its values by rank, its exception naming the rank."""
    ip.run_cell(NOTEBOOK_FUNCTION).raise_error()
    scaled = ip.user_ns["scaled"]
    assert launch(scaled, 3, factor=2, nproc=2, launcher=launcher) == [(0, 6, "2"), (1, 6, "2")]
    with pytest.raises(RankError, match=r"^rank 0 raised ValueError: negative x on rank 0$") as raised:
        launch(scaled, -1, nproc=2, launcher=launcher)
    shown = raised.value._render_traceback_()
    assert 'raise ValueError(f"negative x on rank' in "\n".join(shown), shown
    assert shown[-1] == "RankError: rank 0 raised ValueError: negative x on rank 0"


def test_launch_says_what_cannot_be_sent(ip, outside_slurm):
    lock = threading.Lock()
    with pytest.raises(UsageError, match="launch: the function or its arguments cannot be sent"):
        launch(lambda: lock, nproc=1)


def test_a_gigabyte_each_way(ip, in_allocation, torch_installed):
    """1 GB to every rank and 1 GB back, through the connection alone."""
    import numpy as np

    big = np.arange(1 << 27, dtype=np.float64)  # 1 GiB
    tic = time.monotonic()
    back = launch(_echo_on_rank_0, big, nproc=2, launcher="srun")
    took = time.monotonic() - tic
    assert back[1] == float(big.sum()) and np.array_equal(back[0], big), "every byte"
    print(f"1 GiB to 2 ranks and 1 GiB back: {took:.1f} s")


def _echo_on_rank_0(values):
    import os

    return values if os.environ["RANK"] == "0" else float(values.sum())


ACCELERATE_TRAINING = """
def train(lr, steps):
    import torch
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    model, optimizer = accelerator.prepare(model, optimizer)
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(accelerator.process_index))
    y = x.sum(dim=1, keepdim=True)  # each rank its own data, one model
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        accelerator.backward(loss)
        optimizer.step()
        losses.append(loss.item())
    weights = accelerator.unwrap_model(model).weight.detach().tolist()
    kind = str(accelerator.distributed_type)
    return accelerator.process_index, accelerator.num_processes, kind, losses, weights
"""


@pytest.mark.parametrize("launcher", ["standalone", "srun"])
def test_accelerate_training_as_notebook_launcher_would(ip, in_allocation, torch_installed, launcher):
    """The docs' notebook_launcher use case: no fork of the kernel, no variables to pop."""
    ip.run_cell(ACCELERATE_TRAINING).raise_error()
    ranks = launch(ip.user_ns["train"], 0.05, 20, nproc=2, launcher=launcher)
    multi_cpu = "DistributedType.MULTI_CPU"
    assert [rank[:3] for rank in ranks] == [(0, 2, multi_cpu), (1, 2, multi_cpu)]
    assert ranks[0][4] == ranks[1][4], "one model: DDP keeps the ranks' weights equal"
    assert all(losses[-1] < losses[0] / 2 for *_, losses, _ in ranks), "it trains"


INTRUDER = """
import socket, struct, sys
length = struct.Struct("!Q")
def send(sock, data):
    sock.sendall(length.pack(len(data)) + data)
def exactly(sock, size):
    data = b""
    while len(data) < size and (chunk := sock.recv(size - len(data))):
        data += chunk
    return data
for rank in (b"0 n1", b"1 n2"):  # wants the offer; would put a result and an exit status
    with socket.create_connection(("127.0.0.1", int(sys.argv[1]))) as sock:
        sock.settimeout(10)
        exactly(sock, length.size + 32)  # the kernel's nonce, framed
        try:
            for part in (rank, b"n" * 32, b"p" * 32, b"put", b"stolen", b"exit", b"0"):
                send(sock, part)
            answer = sock.recv(4096)
        except (ConnectionResetError, BrokenPipeError):  # closed on us, our bytes unread
            answer = b""
        print("answered" if answer else "refused")
"""


def test_the_exchange_refuses_anyone_without_the_runs_key(ip):
    """Another user on the node (nobody) can neither read the offer nor put a result, nor pass
    for a rank."""
    with Exchange(b"the notebook's data", LOOPBACK) as exchange:
        port = exchange.env["IPCMAGIC_EXCHANGE"].rsplit(":", 1)[1]
        out = subprocess.run(
            ["runuser", "-u", "nobody", "--", "/usr/bin/python3", "-c", INTRUDER, port],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.stdout.splitlines() == ["refused", "refused"], out.stderr
    assert exchange.results == exchange.nodes == exchange.exits == {} and exchange.refused == 2


@pytest.mark.parametrize("end", ["timeout", "interrupt"])
def test_nothing_is_left_after_a_timeout_or_an_interrupt(ip, in_allocation, torch_installed, end):
    """The exchange closes with the run; the nothing_left fixture checks processes, steps, files."""
    ip.user_ns["x"] = 1
    sleeping = "import time\nprint('sleeping', flush=True)\ntime.sleep(60)"
    if end == "interrupt":
        threading.Timer(2, os.kill, (os.getpid(), signal.SIGINT)).start()
    with pytest.raises(TorchrunInterrupted if end == "interrupt" else TorchrunError):
        ip.run_cell_magic(
            "torchrun", f"-n 2 --timeout {60 if end == 'interrupt' else 2} --push x --pull x", sleeping
        )
    assert "x" in ip.user_ns and ip.user_ns["x"] == 1
