"""mkdocs hook: ``<!-- help: NAME -->`` in a page becomes the help text of the magic NAME."""

from __future__ import annotations

import re

from ipcmagic.magics import IPClusterMagics

HELP = re.compile(r"<!-- help: (\w+) -->")


def magic_help(name: str) -> str:
    """What ``%NAME?`` shows, as a text block."""
    text = getattr(IPClusterMagics, name).__doc__.removeprefix("::\n\n")
    return f"```text\n{text.strip()}\n```"


def on_page_markdown(markdown: str, **_) -> str:
    return HELP.sub(lambda match: magic_help(match[1]), markdown)
