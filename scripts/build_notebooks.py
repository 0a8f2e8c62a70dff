"""Build every committed notebook from its jupytext percent source (lessons, exercise solutions,
student exercises), or check that none is stale.

Layout (the source sits beside what it builds; one exercise source makes two notebooks, so it lives
in ``exercises/src/`` rather than under ``solutions/``)::

    notebooks/src/NN_name.py             ->  notebooks/NN_name.ipynb                      (lesson)
    notebooks/exercises/src/exNN_name.py ->  notebooks/exercises/solutions/exNN_name.ipynb (solution)
                                         ->  notebooks/exercises/exNN_name.ipynb           (student)

A source is a Python file in jupytext's percent format: ``# %%`` starts a code cell, ``# %% [markdown]``
a markdown cell (its lines commented with ``# ``), and cell tags are written on the marker line::

    # %% tags=["parameters"]      the one cell papermill overrides (WORLD, SMOKE, ...)
    # %% tags=["solution"]        exercise code the student writes, between nbgrader's
                                  ### BEGIN SOLUTION / ### END SOLUTION lines (markdown too:
                                  ``# %% [markdown] tags=["solution"]`` is a free-text answer)
    # %% tags=["check"]           an exercise's check cell

Being real Python, the sources are linted by ruff, understood by editors and diffed line by line,
and LaTeX is written once (no doubled backslashes). Jupytext comments IPython magics out in this
format (``%pip`` would become a comment, and an empty ``if`` block a syntax error), so the sources
use none: the Colab cell runs pip through ``subprocess``. The ``.ipynb`` files stay committed
because they are what students open (GitHub, Colab badges, Binder, papermill in CI).

Each notebook is a pure function of its source: no outputs, cell ids ``cell-00``, ``cell-01``, ...
in order, only the ``tags`` cell metadata, the kernelspec ``python3`` and no jupytext metadata, so
rebuilding an unchanged source gives a byte-identical file. A student notebook is its solution
with each ``### BEGIN SOLUTION`` ... ``### END SOLUTION`` block of a cell tagged ``solution``
replaced by ``# YOUR CODE HERE`` + ``raise NotImplementedError()`` (code, at the BEGIN line's
indentation) or ``YOUR ANSWER HERE`` (markdown), and links to ``notebooks/exercises/solutions/``
pointed at the student notebooks.

Usage::

    python scripts/build_notebooks.py            # write every notebook from the sources
    python scripts/build_notebooks.py --check    # write nothing; exit 1 naming every stale notebook
    python scripts/build_notebooks.py --from-notebook notebooks/01_data.ipynb
        # an edit made in Jupyter: write the notebook's cells back into its source (then build)

Open a source in JupyterLab as a notebook with jupytext installed (``pip install -e ".[dev]"``;
right-click, *Open With*, *Notebook*); ``[tool.jupytext]`` in pyproject.toml keeps what it saves
free of jupytext metadata. tests/test_notebook_sources.py runs ``--check``'s comparison.
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from pathlib import Path

import jupytext
import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
LESSON_SOURCES = NOTEBOOKS / "src"
EXERCISE_SOURCES = NOTEBOOKS / "exercises" / "src"
SOLUTIONS = NOTEBOOKS / "exercises" / "solutions"
STUDENTS = NOTEBOOKS / "exercises"
BUILD = "python scripts/build_notebooks.py"

FORMAT = "py:percent"
KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}
# What jupytext writes and reads back: cell tags only, no notebook metadata (no header).
JUPYTEXT_FILTERS = {"notebook_metadata_filter": "-all", "cell_metadata_filter": "tags,-all"}
# Cell metadata jupytext uses for its own round trip (blank lines, markers): not the notebook's.
_JUPYTEXT_KEYS = {
    "skipline", "noskipline", "cell_marker", "lines_to_next_cell", "lines_to_end_of_cell_marker",
}

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
CODE_STUB = ("# YOUR CODE HERE", "raise NotImplementedError()")
ANSWER_STUB = "YOUR ANSWER HERE"
_BEGIN = re.compile(r"^(\s*)### BEGIN SOLUTION\s*$")
_END = re.compile(r"^\s*### END SOLUTION\s*$")


class SolutionMarkupError(ValueError):
    """A solution notebook's BEGIN/END SOLUTION markers are missing, unbalanced or untagged."""


class SourceError(ValueError):
    """A notebook source holds something the build would not carry over faithfully."""


# --------------------------------------------------------------------------------------------
# source -> notebook


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def notebook_from_source(path: Path) -> nbformat.NotebookNode:
    """The notebook of a percent source (in memory): stable ids, tags only, no outputs."""
    text = Path(path).read_text(encoding="utf-8")
    parsed = jupytext.reads(text, fmt=FORMAT)
    cells = []
    for i, cell in enumerate(parsed.cells):
        extra = set(cell.metadata) - {"tags"} - _JUPYTEXT_KEYS
        if extra:
            raise SourceError(
                f"{_rel(path)}, cell {i}: metadata {sorted(extra)} would be lost; the build keeps "
                "only tags (write them as # %% tags=[...])"
            )
        if cell.cell_type == "markdown":
            new = new_markdown_cell(cell.source)
        elif cell.cell_type == "code":
            new = new_code_cell(cell.source)
        else:
            raise SourceError(f"{_rel(path)}, cell {i}: a {cell.cell_type} cell; use code or markdown")
        if cell.metadata.get("tags"):
            new.metadata["tags"] = list(cell.metadata["tags"])
        new.id = f"cell-{i:02d}"  # stable ids: rebuilding an unchanged source changes nothing
        cells.append(new)
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def source_from_notebook(nb: nbformat.NotebookNode) -> str:
    """The percent source of a notebook: its cells and tags only (the inverse of the build)."""
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        tags = cell.metadata.get("tags")
        cell.metadata = {"tags": tags} if tags else {}
    nb.metadata = {"jupytext": dict(JUPYTEXT_FILTERS)}
    return jupytext.writes(nb, fmt=FORMAT)


def to_text(nb: nbformat.NotebookNode) -> str:
    """A notebook file's exact text (what is committed)."""
    text = nbformat.writes(nb)
    return text if text.endswith("\n") else text + "\n"


# --------------------------------------------------------------------------------------------
# solution -> student (nbgrader's conventions)


def _blank(source: str, markdown: bool, where: str) -> str:
    out: list[str] = []
    inside = False
    found = False
    for line in source.splitlines():
        if not inside:
            m = _BEGIN.match(line)
            if m:
                inside, found = True, True
                if markdown:
                    out.append(ANSWER_STUB)
                else:
                    out += [m.group(1) + stub for stub in CODE_STUB]
            elif _END.match(line):
                raise SolutionMarkupError(f"{where}: '{END}' without a '{BEGIN}' before it")
            else:
                out.append(line)
        elif _END.match(line):
            inside = False
        elif _BEGIN.match(line):
            raise SolutionMarkupError(f"{where}: '{BEGIN}' inside another solution block")
    if inside:
        raise SolutionMarkupError(f"{where}: '{BEGIN}' without a matching '{END}'")
    if not found:
        raise SolutionMarkupError(f"{where}: tagged 'solution' but has no '{BEGIN}' block")
    return "\n".join(out)


def student_notebook(
    solution: nbformat.NotebookNode, name: str = "notebook"
) -> nbformat.NotebookNode:
    """The student version of a solution notebook (see the module docstring)."""
    nb = copy.deepcopy(solution)
    for i, cell in enumerate(nb.cells):
        where = f"{name}, cell {i}"
        tags = cell.get("metadata", {}).get("tags", [])
        if "solution" in tags:
            cell.source = _blank(cell.source, cell.cell_type == "markdown", where)
        elif BEGIN in cell.source or END in cell.source:
            raise SolutionMarkupError(f"{where}: has solution markers but is not tagged 'solution'")
        if cell.cell_type == "markdown":
            cell.source = cell.source.replace(
                "notebooks/exercises/solutions/", "notebooks/exercises/"
            )
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        cell.metadata.pop("execution", None)
    return nb


# --------------------------------------------------------------------------------------------
# every target


def sources() -> dict[Path, Path]:
    """Every lesson and solution notebook -> its source."""
    out = {NOTEBOOKS / f"{src.stem}.ipynb": src for src in sorted(LESSON_SOURCES.glob("*.py"))}
    out.update(
        {SOLUTIONS / f"{src.stem}.ipynb": src for src in sorted(EXERCISE_SOURCES.glob("*.py"))}
    )
    return out


def expected() -> dict[Path, tuple[str, Path]]:
    """Every notebook the sources make -> (its exact text, the source it comes from)."""
    out: dict[Path, tuple[str, Path]] = {}
    for target, src in sources().items():
        nb = notebook_from_source(src)
        out[target] = (to_text(nb), src)
        if target.parent == SOLUTIONS:
            out[STUDENTS / target.name] = (to_text(student_notebook(nb, _rel(src))), src)
    return out


def committed() -> list[Path]:
    """Every notebook in the folders the build writes (to find ones without a source)."""
    return sorted(
        p for d in (NOTEBOOKS, STUDENTS, SOLUTIONS) for p in d.glob("*.ipynb")
    )


def stale() -> list[str]:
    """One line per committed notebook that differs from its build, is missing, or has no source."""
    want = expected()
    lines = []
    for target, (text, src) in want.items():
        if not target.is_file():
            lines.append(f"{_rel(target)} is missing (built from {_rel(src)})")
        elif target.read_text(encoding="utf-8") != text:
            lines.append(f"{_rel(target)} differs from its source {_rel(src)}")
    for path in committed():
        if path not in want:
            lines.append(f"{_rel(path)} has no source (expected one in {_rel(_source_dir(path))}/)")
    return lines


def _source_dir(notebook: Path) -> Path:
    return LESSON_SOURCES if notebook.parent == NOTEBOOKS else EXERCISE_SOURCES


def fix_hint() -> str:
    """What to run when ``stale()`` is not empty."""
    return (
        f"run `{BUILD}` to rebuild them from their sources; if the change was made in the "
        f"notebook (Jupyter), first copy it back with `{BUILD} --from-notebook NOTEBOOK`"
    )


def _write(path: Path, text: str) -> None:
    try:
        from medclipsam._utils import atomic_write_text
    except ImportError:  # a checkout without the package installed
        sys.path.insert(0, str(ROOT))
        from medclipsam._utils import atomic_write_text
    atomic_write_text(path, text)


def main(argv: list[str] | None = None) -> int:
    """Write (or with ``--check`` verify) every notebook; returns the exit status."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--check", action="store_true",
        help="write nothing; exit 1 naming every notebook that is stale, missing or without a source",
    )
    ap.add_argument(
        "--from-notebook", metavar="NOTEBOOK", nargs="+", type=Path,
        help="write these lesson or solution notebooks' cells back into their sources "
        "(keeps an edit made in Jupyter), then build",
    )
    args = ap.parse_args(argv)

    if args.check:
        try:
            lines = stale()
        except (SolutionMarkupError, SourceError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        if lines:
            print("stale notebooks:\n  " + "\n  ".join(lines) + "\n" + fix_hint(), file=sys.stderr)
            return 1
        print(f"{len(expected())} notebooks are in sync with their sources")
        return 0

    if args.from_notebook:
        by_target = {t.resolve(): s for t, s in sources().items()}
        for nb_path in args.from_notebook:
            nb_path = nb_path.resolve()
            if nb_path.parent == STUDENTS:
                print(f"error: {_rel(nb_path)} is a student notebook; edit its solution "
                      f"({_rel(SOLUTIONS / nb_path.name)}) instead", file=sys.stderr)
                return 1
            src = by_target.get(nb_path) or _source_dir(nb_path) / f"{nb_path.stem}.py"
            _write(src, source_from_notebook(nbformat.read(nb_path, as_version=4)))
            print("wrote", _rel(src))

    try:
        want = expected()
    except (SolutionMarkupError, SourceError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for target, (text, _) in want.items():
        if not target.is_file() or target.read_text(encoding="utf-8") != text:
            _write(target, text)
            print("wrote", _rel(target))
    orphans = [p for p in committed() if p not in want]
    for p in orphans:
        print(f"warning: {_rel(p)} has no source in {_rel(_source_dir(p))}/", file=sys.stderr)
    print(f"{len(want)} notebooks built")
    return 0


if __name__ == "__main__":
    sys.exit(main())
