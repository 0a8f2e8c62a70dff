"""Make the student exercise notebooks from the solution notebooks (nbgrader's conventions).

For every ``notebooks/exercises/solutions/exNN_*.ipynb`` this writes
``notebooks/exercises/exNN_*.ipynb``, the same notebook with:

* in each cell tagged ``solution``, every block from a ``### BEGIN SOLUTION`` line to the next
  ``### END SOLUTION`` line replaced by ``# YOUR CODE HERE`` + ``raise NotImplementedError()``
  (code, at the indentation of the BEGIN line) or by ``YOUR ANSWER HERE`` (markdown);
* links to ``notebooks/exercises/solutions/`` pointed at the student notebooks instead;
* no outputs, no execution counts, the same cell ids (the output is a pure function of the
  solution notebook, so an unchanged solution gives a byte-identical student notebook).

Usage::

    python scripts/make_student_notebooks.py                 # write the student notebooks
    python scripts/make_student_notebooks.py --from-sources  # first rebuild the solutions from
                                                             # scripts/notebooks/exercises/ex*.py
    python scripts/make_student_notebooks.py --check         # exit 1 if anything is stale

``--check`` also rebuilds each solution notebook in memory from its source script and compares.
"""

from __future__ import annotations

import argparse
import copy
import re
import runpy
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ROOT / "scripts" / "notebooks" / "exercises"
SOLUTIONS = ROOT / "notebooks" / "exercises" / "solutions"
STUDENTS = ROOT / "notebooks" / "exercises"

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
CODE_STUB = ("# YOUR CODE HERE", "raise NotImplementedError()")
ANSWER_STUB = "YOUR ANSWER HERE"
_BEGIN = re.compile(r"^(\s*)### BEGIN SOLUTION\s*$")
_END = re.compile(r"^\s*### END SOLUTION\s*$")


class SolutionMarkupError(ValueError):
    """A solution notebook's BEGIN/END SOLUTION markers are missing, unbalanced or untagged."""


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


def _text(nb: nbformat.NotebookNode) -> str:
    text = nbformat.writes(nb)
    return text if text.endswith("\n") else text + "\n"


def _write(path: Path, text: str) -> None:
    try:
        from medclipsam._utils import atomic_write_text
    except ImportError:  # a checkout without the package installed
        sys.path.insert(0, str(ROOT))
        from medclipsam._utils import atomic_write_text
    atomic_write_text(path, text)


def _sources() -> list[Path]:
    return sorted(SOURCES.glob("ex[0-9]*.py"))


def _solution_from_source(src: Path) -> tuple[str, str]:
    """(name, notebook text) built in memory from an exercise source script."""
    sys.path.insert(0, str(SOURCES))
    try:
        from _extools import notebook, to_text
    finally:
        sys.path.remove(str(SOURCES))
    ns = runpy.run_path(str(src), run_name="exercise_source")
    return ns["NAME"], to_text(notebook(ns["cells"]))


def main(argv: list[str] | None = None) -> int:
    """Write (or with ``--check`` verify) the student notebooks; returns the exit status."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 when a committed notebook is stale",
    )
    ap.add_argument(
        "--from-sources",
        action="store_true",
        help="first rebuild the solution notebooks from scripts/notebooks/exercises/",
    )
    args = ap.parse_args(argv)

    stale: list[str] = []
    if args.check or args.from_sources:
        for src in _sources():
            name, text = _solution_from_source(src)
            path = SOLUTIONS / f"{name}.ipynb"
            if args.check:
                if not path.is_file() or path.read_text() != text:
                    stale.append(
                        f"{path.relative_to(ROOT)} (rebuild it from {src.relative_to(ROOT)})"
                    )
            else:
                _write(path, text)
                print("wrote", path.relative_to(ROOT))
    solutions = sorted(SOLUTIONS.glob("ex[0-9]*.ipynb"))
    if not solutions:
        print(f"no solution notebooks in {SOLUTIONS}", file=sys.stderr)
        return 1
    expected = set()
    for sol in solutions:
        target = STUDENTS / sol.name
        expected.add(target.name)
        try:
            text = _text(student_notebook(nbformat.read(sol, as_version=4), sol.name))
        except SolutionMarkupError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        if args.check:
            if not target.is_file() or target.read_text() != text:
                stale.append(str(target.relative_to(ROOT)))
        else:
            _write(target, text)
            print("wrote", target.relative_to(ROOT))
    orphans = [p.name for p in STUDENTS.glob("ex[0-9]*.ipynb") if p.name not in expected]
    if orphans:
        stale += [f"notebooks/exercises/{n} (no solution notebook)" for n in sorted(orphans)]
    if args.check:
        if stale:
            print(
                "stale (run python scripts/make_student_notebooks.py --from-sources):\n  "
                + "\n  ".join(stale),
                file=sys.stderr,
            )
            return 1
        print(f"{len(solutions)} student notebooks are in sync with their solutions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
