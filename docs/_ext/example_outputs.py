"""The site shows the example notebooks with the outputs they are shipped with (myst-nb does not
execute them), so a notebook stored without its outputs would be a page of code only: the build
fails instead, naming the notebook and what is missing."""

from __future__ import annotations

import json
from typing import Any

from sphinx.errors import SphinxError


class NotebookWithoutOutputs(SphinxError):
    category = "Example notebook stored without its outputs"


def missing_outputs(notebook: dict[str, Any]) -> list[str]:
    """What a notebook lacks to show what a user sees: no outputs at all, code cells that were not
    run when it was stored, cells whose output nbval checks but which have none."""
    code = [(number, cell) for number, cell in enumerate(notebook["cells"], 1) if cell["cell_type"] == "code"]
    if code and not any(cell.get("outputs") for _, cell in code):
        return ["no cell has an output"]
    problems = [f"cell {number} was not run" for number, cell in code if cell.get("execution_count") is None]
    checked = [
        number
        for number, cell in code
        if "nbval-check-output" in cell.get("metadata", {}).get("tags", []) and not cell.get("outputs")
    ]
    problems += [f"cell {number} is tagged nbval-check-output but has no output" for number in checked]
    return problems


def check_notebook(app: Any, docname: str, source: list[str]) -> None:
    path = app.env.doc2path(docname)
    if str(path).endswith(".ipynb"):
        problems = missing_outputs(json.loads(source[0]))
        if problems:
            raise NotebookWithoutOutputs(
                f"{app.env.doc2path(docname, base=False)}: {'; '.join(problems)}. Execute it as CI does "
                "(tests/test_notebooks.py) with `python dev/run_notebook.py --store NOTEBOOK` and ship it "
                "with its outputs."
            )


def setup(app: Any) -> dict[str, Any]:
    app.connect("source-read", check_notebook)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
