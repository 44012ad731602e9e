"""The view ``%px`` runs on pushes data once, for the controller to fan out (issue 16): it must
give what ipyparallel's DirectView (``rc[:]``) gives, results and errors alike, in order, leaving
nothing behind in the client (issue 29; ipyparallel's own view and magics tests run against it in
tests/ipyparallel_suite)."""

from __future__ import annotations

import re

import ipyparallel as ipp
import numpy as np
import pytest
from ipyparallel import interactive as on_engines  # the function's names are the engine's
from ipyparallel.error import CompositeError

import ipcmagic
from ipcmagic.cluster.pxview import CACHES, PxView

RANKS = "from mpi4py import MPI\nrank = MPI.COMM_WORLD.rank\nprint('rank', rank)"
FAILS_ON_RANK_1 = "if rank == 1:\n    raise ZeroDivisionError(f'rank {rank} divided by zero')"


@on_engines
def what_engines_hold() -> tuple:
    return rank, data.sum(), name  # noqa: F821 (the engine's)


@on_engines
def divide_by_rank_minus_1() -> float:
    return 1 / (rank - 1)  # noqa: F821


def errors(error: CompositeError) -> list[tuple[str, str, int]]:
    return sorted((name, value, info["engine_id"]) for name, value, _, info in error.elist)


def px_cell(ip, capsys, magic: str, cell: str) -> tuple[list[str], str | None]:
    """What ``%%magic`` printed, line by line in any order (engines answer in any order),
    execution counts left out; and the error it ended with."""
    capsys.readouterr()
    result = ip.run_cell(f"%%{magic}\n{cell}")
    said = capsys.readouterr()
    printed = re.sub(r"\x1b\[[\d;]*m", "", said.out + said.err)  # colours
    printed = re.sub(r"\[\d+:execute\]|In ?\[\d+\]|\[\d+:\d+\]", "#", printed)
    return sorted(printed.splitlines()), type(result.error_in_exec).__name__ if result.error_in_exec else None


@pytest.fixture
def views(ip, in_allocation):
    ip.run_line_magic("ipcluster", "start -n 3")
    client = ipcmagic.client()
    direct, ours = client[:], ipcmagic.view()
    direct.block = True
    assert isinstance(ours, PxView) and ours.targets == direct.targets == [0, 1, 2]
    yield direct, ours
    ip.run_line_magic("ipcluster", "stop")


def test_same_results_as_a_direct_view(views):
    direct, ours = views
    data = np.arange(2**20, dtype=np.float64)  # 8 MiB
    for view in (direct, ours):
        view.execute(RANKS)
        view.push({"data": data, "name": "x"})
        assert view.apply_sync(what_engines_hold) == [(r, data.sum(), "x") for r in range(3)]
        assert all(np.array_equal(d, data) for d in view.pull("data"))
        view.scatter("part", data)
        assert np.array_equal(view.gather("part"), data)
        assert view.map_sync(lambda x: x * 2, range(7)) == list(range(0, 14, 2))
    assert ours.execute("print('rank', rank)").stdout == direct.execute("print('rank', rank)").stdout


def test_same_errors_as_a_direct_view(views):
    direct, ours = views
    raised = []
    for view in (direct, ours):
        view.execute(RANKS)
        with pytest.raises(CompositeError) as error:
            view.execute(FAILS_ON_RANK_1)
        raised.append(errors(error.value))
        with pytest.raises(CompositeError) as error:
            view.apply_sync(divide_by_rank_minus_1)
        raised.append(errors(error.value))
    assert raised[0] == raised[2] == [("ZeroDivisionError", "rank 1 divided by zero", 1)]
    assert raised[1] == raised[3] == [("ZeroDivisionError", "division by zero", 1)]


def test_px_and_autopx_run_on_it(ip, views, capsys):
    direct, ours = views
    direct.activate("_direct")  # %%px_direct: %%px as it ran on a DirectView
    for cell in (RANKS, FAILS_ON_RANK_1):
        assert px_cell(ip, capsys, "px", cell) == px_cell(ip, capsys, "px_direct", cell)
    printed, failed = px_cell(ip, capsys, "px", FAILS_ON_RANK_1)
    assert failed == "AlreadyDisplayedError" and "ZeroDivisionError: rank 1 divided by zero" in printed
    assert ip.run_cell("%%px --targets 1\ny = rank * 10").success
    assert direct.pull("y", targets=1) == 10
    ip.run_line_magic("autopx", "")
    ip.run_cell("z = rank + 100")
    ip.run_cell("%autopx")
    assert direct.pull("z") == [100, 101, 102] and "z" not in ip.user_ns


def cached(client) -> dict[str, int]:
    """How many messages the client holds in its caches and as outstanding."""
    return {name: len(getattr(client, name)) for name in (*CACHES, "outstanding")}


def test_nothing_waits_after_px(ip, views):
    direct, ours = views
    client = ours.client
    ip.run_cell("%%px\ny = 1")
    ours.push({"data": np.ones(1000)})
    assert client.wait(timeout=3) and ours.wait(timeout=3) and not client.outstanding
    assert client.wait() and ours.wait()  # no timeout: would hang on a message never answered


def test_nothing_overtakes(views):
    """What a user sends later arrives later, whichever way either message goes."""
    direct, ours = views
    wrong = []
    for i in range(200):  # each way the issue found a message overtaken failed 5 to 9 tries in 10
        ours.push({"f": lambda x, i=i: x + i}, block=False)
        if ours.map_sync(ipp.Reference("f"), range(6)) != [x + i for x in range(6)]:
            wrong.append(f"{i}: map before push")
        ours.push({"a": "old"}, block=False)
        ours.scatter("a", list(range(6)), block=False)
        if ours.pull("a") != [[0, 1], [2, 3], [4, 5]]:
            wrong.append(f"{i}: scatter before push")
        ours.execute("b = 'old'", block=False)
        ours.push({"b": i})  # blocking: sent once only with nothing outstanding
        if direct.pull("b") != [i] * 3:
            wrong.append(f"{i}: push before execute")
    assert not wrong


def test_nothing_left_in_the_client(ip, views):
    direct, ours = views
    client = ours.client
    ours.execute("y = 1")
    before = cached(client)
    for i in range(300):  # one cached message per execute or push would show
        ours.execute("y = 1", block=True)
        if i % 3 == 0:
            ours.push({"y": i})
    assert cached(client) == before
    client.purge_everything()  # nothing outstanding that cannot be purged
