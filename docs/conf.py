"""Sphinx configuration: the site is built from docs/*.md (MyST Markdown) and the example notebooks
with the outputs they are shipped with (myst-nb, never executed here; nbval runs them in CI and
compares the outputs of the cells tagged nbval-check-output); a notebook shipped without its
outputs fails the build (docs/_ext/example_outputs.py).

    sphinx-build -W -b html -c docs . docs/_build/html     # from the repository root
    python -m http.server -d docs/_build/html              # then open http://localhost:8000
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "_ext"))

project = "ipcmagic"
author = "ipcmagic's developers"
root_doc = "docs/index"
# the repository root is the source directory: the pages in docs/, the notebooks in examples/
include_patterns = ["docs/*.md", "docs/img/*", "examples/*.ipynb"]
extensions = ["myst_nb", "magic_help", "example_outputs"]
myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3  # links such as failures.md#the-watchdog
nb_execution_mode = "off"  # the outputs nbval checked, as the notebooks are shipped
html_extra_path = ["_root"]  # index.html at the top: on to docs/index.html
highlight_language = "ipython3"  # magics in code blocks
html_theme = "pydata_sphinx_theme"
html_title = "ipcmagic"
html_theme_options = {"show_toc_level": 2}
