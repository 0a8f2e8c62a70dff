"""Build the exercise SOLUTION notebooks from a compact list of (kind, source) cells.

Each ``exNN_*.py`` beside this file defines ``NAME`` and ``cells`` and, run as a script, writes
``notebooks/exercises/solutions/NAME.ipynb`` (no outputs, stable cell ids). The student version is
made from it by ``scripts/make_student_notebooks.py`` (nbgrader's conventions: the code between
``### BEGIN SOLUTION`` and ``### END SOLUTION`` of a cell tagged ``solution`` is replaced by
``# YOUR CODE HERE`` and ``raise NotImplementedError()``). To rebuild everything::

    python scripts/make_student_notebooks.py --from-sources

Cell kinds: ``"md"``, ``"code"``, ``"params"`` (tagged ``parameters`` for papermill),
``"solution"`` (code the student writes, tagged ``solution``), ``"check"`` (a check cell, tagged
``check``) and ``"answer"`` (markdown the student writes, tagged ``solution``: a free-text answer).
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parents[3]
SOLUTIONS = ROOT / "notebooks" / "exercises" / "solutions"
STUDENTS = ROOT / "notebooks" / "exercises"
REPO = "medclipsam/medclipsam"

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from nbtools import SETUP  # noqa: E402  (the Colab install cell of the lesson notebooks)

__all__ = ["SETUP", "build", "colab_badge", "notebook", "to_text"]


def colab_badge(name: str) -> str:
    """A Colab badge opening the STUDENT notebook ``notebooks/exercises/NAME.ipynb``."""
    return (
        f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
        f"(https://colab.research.google.com/github/{REPO}/blob/main/notebooks/exercises/"
        f"{name}.ipynb)"
    )


_TAGS = {
    "params": ["parameters"],
    "solution": ["solution"],
    "check": ["check"],
    "answer": ["solution"],
}


def notebook(cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    """The solution notebook of ``cells`` (in memory)."""
    nb = new_notebook()
    out = []
    for kind, src in cells:
        src = src.strip("\n")
        if kind in ("md", "answer"):
            c = new_markdown_cell(src)
        elif kind in ("code", "params", "solution", "check"):
            c = new_code_cell(src)
        else:
            raise ValueError(f"unknown cell kind {kind!r}")
        if kind in _TAGS:
            c.metadata["tags"] = list(_TAGS[kind])
        out.append(c)
    for i, c in enumerate(out):
        c.id = f"cell-{i:02d}"  # stable ids: rebuilding an unchanged notebook changes nothing
    nb.cells = out
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def to_text(nb: nbformat.NotebookNode) -> str:
    """The notebook file's exact text (what is committed)."""
    text = nbformat.writes(nb)
    return text if text.endswith("\n") else text + "\n"


def build(cells: list[tuple[str, str]], name: str) -> Path:
    """Write ``notebooks/exercises/solutions/NAME.ipynb`` (atomically)."""
    try:
        from medclipsam._utils import atomic_write_text
    except ImportError:  # run from a checkout without the package installed
        sys.path.insert(0, str(ROOT))
        from medclipsam._utils import atomic_write_text

    target = SOLUTIONS / f"{name}.ipynb"
    atomic_write_text(target, to_text(notebook(cells)))
    print("wrote", target)
    return target
