"""``<!-- help: NAME -->`` in a page becomes the help text of the magic NAME (what ``%NAME?``
shows), so the reference cannot drift from the code."""

from __future__ import annotations

import re
from typing import Any

HELP = re.compile(r"<!-- help: (\w+) -->")


def magic_help(name: str) -> str:
    """What ``%NAME?`` shows, as a text block."""
    from ipcmagic.magics import IPClusterMagics

    text = getattr(IPClusterMagics, name).__doc__.removeprefix("::\n\n")
    return f"```text\n{text.strip()}\n```"


def insert_help(app: Any, docname: str, source: list[str]) -> None:
    source[0] = HELP.sub(lambda match: magic_help(match[1]), source[0])


def setup(app: Any) -> dict[str, Any]:
    app.connect("source-read", insert_help)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
