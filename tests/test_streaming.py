"""``%%px`` output reaches the notebook about once, and bounded (issue 37 item 7), in a real
Jupyter kernel: ipyparallel resent each engine's whole output on every update (a cell printing
50 MB delivered 440-560 MB)."""

from __future__ import annotations

import pytest
from jupyter_client.manager import start_new_kernel

from benchmarks.streaming import GOAL, START, delivered, many_lines


@pytest.fixture
def kernel(nothing_left):
    """A Jupyter kernel with 2 local engines, ``%%px`` on ipcmagic's view, ``%%pxstock`` on a
    DirectView."""
    km, kc = start_new_kernel(kernel_name="python3")
    try:
        delivered(kc, START, timeout=120)
        yield kc
        delivered(kc, "%ipcluster stop")
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_each_character_is_sent_about_once(kernel):
    cell = many_lines(2000, 3)  # 2 engines print 720,000 characters in 3 s
    ours, stock = (delivered(kernel, f"%%{magic}\n{cell}") for magic in ("px", "pxstock"))
    printed = 2 * 2000 * 3 * 60
    assert ours["chars"] <= GOAL * printed, ours
    assert stock["chars"] > 2 * printed, "the benchmark tells them apart"


def test_output_past_the_limit_is_not_shown_and_said(kernel):
    delivered(kernel, "ipcmagic._magics.cluster.view.output_limit = 1000")
    out: list[str] = []

    def shown(msg: dict) -> None:
        if msg["msg_type"] in ("stream", "display_data", "update_display_data"):
            out.append(msg["content"].get("text") or msg["content"]["data"]["text/plain"])

    cell = "%%px\nfor i in range(100):\n    print('z' * 99)"
    kernel.execute_interactive(cell, output_hook=shown, timeout=60)
    last = {text.partition(" ")[0]: text for text in out}  # each display as last updated
    for eid in (0, 1):
        text = last[f"[stdout:{eid}]"]
        assert text.count("z") == 990, "10 lines of 100 characters"
        assert text.endswith(
            f"[stdout:{eid}] output past 1,000 characters is not shown (c.IPCluster.output_limit); "
            f"%%px -o NAME keeps all of it in NAME.stdout[{eid}]\n"
        ), text
    reply = kernel.execute_interactive("%%px -o r\nprint('z' * 5000)", timeout=60)
    assert reply["content"]["status"] == "ok"
    reply = kernel.execute_interactive("assert [len(s) for s in r.stdout] == [5001, 5001]", timeout=60)
    assert reply["content"]["status"] == "ok", "the result keeps all of it"
