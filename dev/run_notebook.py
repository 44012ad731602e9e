"""Execute a notebook with a real kernel and print each cell's source and outputs."""

import sys

import nbformat
from nbclient import NotebookClient


def main(path: str) -> None:
    notebook = nbformat.read(path, as_version=4)
    try:
        NotebookClient(notebook, timeout=300, kernel_name="python3").execute()
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


if __name__ == "__main__":
    main(sys.argv[1])
