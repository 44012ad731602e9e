"""Execute a notebook with a real kernel and print each cell's source and outputs.

    python dev/run_notebook.py NOTEBOOK            # print only
    python dev/run_notebook.py --store NOTEBOOK    # and store the outputs in the notebook

With --store the notebook keeps the outputs as a user sees them in Jupyter (a stream's pieces
joined, a progress bar's last state), which the docs site shows and nbval compares in the cells
tagged nbval-check-output. Store them from a run like CI's (tests/test_notebooks.py), a job step
in a Slurm test lab:

    source "$(dev/slurmlab start)"
    salloc -Q -n 5 srun -n 1 .venv/bin/python dev/run_notebook.py --store examples/dask.ipynb

    source "$(SLURMLAB_NODES=2 dev/slurmlab start)"; export TORCH_CPP_LOG_LEVEL=ERROR
    salloc -Q -N 2 --ntasks-per-node=2 srun -N 1 -n 1 \\
        .venv/bin/python dev/run_notebook.py --store examples/multinode.ipynb
"""

import re
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

#: what a terminal or Jupyter keeps of a line rewritten with carriage returns: its last state
REWRITTEN = re.compile(r"^[^\n]*\r(?=[^\n])", re.MULTILINE)


def as_shown(outputs: list) -> list:
    """Consecutive pieces of one stream joined, each rewritten line as it ends up."""
    shown = []
    for output in outputs:
        if output.output_type == "stream" and shown and shown[-1].get("name") == output.name:
            shown[-1].text += output.text
        else:
            shown.append(output)
    for output in shown:
        if output.output_type == "stream":
            output.text = REWRITTEN.sub("", output.text.replace("\r\n", "\n"))
    return shown


def main(path: str, store: bool = False) -> None:
    notebook = nbformat.read(path, as_version=4)
    try:
        # outputs to store come from a kernel in the notebook's folder, as nbval runs it
        resources = {"metadata": {"path": str(Path(path).resolve().parent)}} if store else {}
        NotebookClient(
            notebook, timeout=300, kernel_name="python3", record_timing=False, resources=resources
        ).execute()
    finally:
        for cell in notebook.cells:
            if cell.cell_type != "code":
                continue
            print(f"In [{cell.execution_count or ' '}]:", cell.source, sep="\n")
            for output in cell.get("outputs", []):
                text = output.get("text") or output.get("data", {}).get("text/plain", "")
                if output.output_type == "error":
                    text = f"{output.ename}: {output.evalue}"
                print(text.rstrip())
            print()
    if store:
        for cell in notebook.cells:
            if cell.cell_type == "code":
                cell.outputs = as_shown(cell.outputs)
        nbformat.write(notebook, path)


if __name__ == "__main__":
    store = "--store" in sys.argv[1:]
    main(*[arg for arg in sys.argv[1:] if arg != "--store"], store=store)
