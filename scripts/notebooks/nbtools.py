"""Build the lesson notebooks from a compact list of (kind, source) cells.

Each ``nbNN_*.py`` beside this file is the source of one notebook in ``notebooks/``: edit it and
run ``python scripts/notebooks/nbNN_name.py`` (or ``python scripts/notebooks/build_all.py``), which
writes the notebook without outputs, with the one ``parameters`` cell tagged for papermill.
"""
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

REPO = "medclipsam/medclipsam"

def colab_badge(path):
    return (f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
            f"(https://colab.research.google.com/github/{REPO}/blob/main/{path})")

SETUP = '''# Colab only: install the package into the runtime (JupyterLab and Binder users have it already).
import sys

if "google.colab" in sys.modules:
    %pip install -q "medclipsam @ git+https://github.com/''' + REPO + '''.git"'''

def build(cells, path):
    nb = new_notebook()
    out = []
    for kind, src in cells:
        src = src.strip("\n")
        if kind == "md":
            out.append(new_markdown_cell(src))
        elif kind == "params":
            c = new_code_cell(src)
            c.metadata["tags"] = ["parameters"]
            out.append(c)
        else:
            out.append(new_code_cell(src))
    for i, c in enumerate(out):
        c.id = f"cell-{i:02d}"  # stable ids: rebuilding an unchanged notebook changes nothing
    nb.cells = out
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    target = Path(__file__).resolve().parents[2] / "notebooks" / path
    nbformat.write(nb, target)
    print("wrote", target)
