"""Grading a folder of submitted exercise notebooks: run each one, read its check lines.

Every ``check_*`` call in an exercise notebook prints (or raises with) a line starting with
``[PASS] check_name`` or ``[FAIL] check_name``. :func:`grade_notebooks` executes each submitted
notebook in a fresh kernel (errors do not stop the run, so later exercises still count), finds the
checks its cells call, and reports per notebook which passed, failed or never ran. The executed
notebooks, with the feedback in them, can be kept to hand back.

Executing a submission runs the student's code with your permissions: grade in a container or a
throwaway account if that matters to you.
"""

from __future__ import annotations

import csv
import re
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .._utils import atomic_path
from ._core import FAIL_MARK, PASS_MARK

__all__ = ["GRADE_COLUMNS", "grade_notebooks", "parse_checks"]

GRADE_COLUMNS = ("notebook", "score", "passed", "failed", "not_run", "checks", "errors", "seconds")
_CALL = re.compile(r"(?<!def )\b(check_[A-Za-z0-9_]+)\s*\(")
_LINE = re.compile(r"(\[PASS\]|\[FAIL\]) (check_[A-Za-z0-9_]+)")


def _expected_checks(nb: Any) -> list[str]:
    names: list[str] = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for line in cell.source.splitlines():
            if line.lstrip().startswith("#"):
                continue
            for name in _CALL.findall(line):
                if name not in names:
                    names.append(name)
    return names


def _cell_texts(cell: Any) -> list[str]:
    out = []
    for o in cell.get("outputs", []):
        if o.get("output_type") == "stream":
            out.append(o.get("text", ""))
        elif o.get("output_type") == "error":
            out.append(f"{o.get('ename', '')}: {o.get('evalue', '')}")
        elif o.get("output_type") in ("execute_result", "display_data"):
            out.append(str(o.get("data", {}).get("text/plain", "")))
    return out


def parse_checks(nb: Any) -> tuple[dict[str, str], list[str]]:
    """From an executed notebook: ``{check_name: "pass" | "fail" | "not run"}`` for every check
    its code calls, and a list of the errors its cells raised (``"cell 7: NameError: ..."``, the
    whole message: a failed check's feedback spans several lines)."""
    status = {name: "not run" for name in _expected_checks(nb)}
    errors = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        for text in _cell_texts(cell):
            for mark, name in _LINE.findall(text):
                if mark == FAIL_MARK or status.get(name) != "fail":
                    status[name] = "pass" if mark == PASS_MARK else "fail"
        for o in cell.get("outputs", []):
            if o.get("output_type") == "error":
                text = str(o.get("evalue", "")).strip()
                errors.append(
                    f"cell {i}: {o.get('ename', 'Error')}" + (f": {text}" if text else "")
                )
    return status, errors


def _inject(nb: Any, parameters: Mapping[str, Any]) -> None:
    """Add a cell setting ``parameters`` after the one tagged ``parameters`` (as papermill does)."""
    from nbformat.v4 import new_code_cell

    if not parameters:
        return
    src = "# Parameters injected by the grader\n" + "\n".join(
        f"{k} = {v!r}" for k, v in parameters.items()
    )
    cell = new_code_cell(src)
    cell.metadata["tags"] = ["injected-parameters"]
    idx = next(
        (
            i
            for i, c in enumerate(nb.cells)
            if "parameters" in c.get("metadata", {}).get("tags", [])
        ),
        None,
    )
    nb.cells.insert(0 if idx is None else idx + 1, cell)
    cell.id = "injected-parameters"


def _grade_one(
    path: Path,
    label: str,
    parameters: Mapping[str, Any],
    timeout: int,
    kernel_name: str,
    out_dir: Path | None,
) -> dict:
    try:
        import nbformat
        from nbclient import NotebookClient
    except ImportError as e:  # pragma: no cover - both come with the notebooks extra
        raise ImportError(
            "grading notebooks needs nbformat and nbclient: pip install 'medclipsam[notebooks]'"
        ) from e

    t0 = time.perf_counter()
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as e:  # noqa: BLE001 - a broken submission is a row, not a crash
        return {
            "notebook": label,
            "score": 0.0,
            "passed": 0,
            "failed": 0,
            "not_run": 0,
            "checks": "",
            "errors": f"{path}: not a readable notebook ({e})",
            "seconds": 0.0,
        }
    _inject(nb, parameters)
    run_error = ""
    with tempfile.TemporaryDirectory(prefix="grade_") as work:
        client = NotebookClient(
            nb,
            timeout=timeout,
            kernel_name=kernel_name,
            allow_errors=True,
            resources={"metadata": {"path": work}},
        )
        try:
            client.execute()
        except Exception as e:  # noqa: BLE001 - a timeout or dead kernel ends this notebook only
            run_error = f"execution stopped: {type(e).__name__}: {str(e).strip()}"
    status, errors = parse_checks(nb)
    if run_error:
        errors.append(run_error)
    if out_dir is not None:
        with atomic_path(out_dir / "executed" / label.replace("/", "__")) as tmp:
            nbformat.write(nb, tmp)
    passed = sum(v == "pass" for v in status.values())
    failed = sum(v == "fail" for v in status.values())
    return {
        "notebook": label,
        "score": round(passed / len(status), 4) if status else 0.0,
        "passed": passed,
        "failed": failed,
        "not_run": len(status) - passed - failed,
        "checks": " ".join(f"{k}:{v.replace(' ', '_')}" for k, v in status.items()),
        "errors": "\n\n".join(errors),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def grade_notebooks(
    paths: Iterable[str | Path],
    *,
    parameters: Mapping[str, Any] | None = None,
    timeout: int = 600,
    kernel_name: str = "python3",
    out_dir: str | Path | None = None,
) -> list[dict]:
    """Run each notebook of ``paths`` (files, or folders whose ``*.ipynb`` are taken) and grade it.

    ``parameters`` are set after each notebook's ``parameters`` cell (e.g. ``{"SMOKE": True}``
    for a quick run); ``timeout`` is per cell, in seconds. Returns one row per notebook with the
    columns of :data:`GRADE_COLUMNS`: ``notebook`` is the file name (``folder/name`` when two
    submissions share one), ``score`` = passed checks / checks the notebook calls, ``errors`` the
    full text of each error a cell raised (a blank line between two).
    With ``out_dir``, writes ``out_dir/grades.csv`` and the executed notebooks (with the
    feedback printed in them) under ``out_dir/executed/``.
    """
    files: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            files += sorted(q for q in p.glob("*.ipynb") if not q.name.startswith("."))
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such notebook or folder")
    if not files:
        raise ValueError("no notebooks to grade")
    out = Path(out_dir) if out_dir is not None else None
    labels: list[str] = []
    for f in files:  # the file name, or folder/name where two submissions share a name
        labels.append(f.name if f.name not in labels else f"{f.parent.name}/{f.name}")
    rows = [
        _grade_one(f, label, parameters or {}, timeout, kernel_name, out)
        for f, label in zip(files, labels)
    ]
    if out is not None:
        # Every text field quoted: an error message spans lines and may hold commas and quotes,
        # which csv.reader / pandas.read_csv / spreadsheets then read back as one cell.
        with atomic_path(out / "grades.csv") as tmp, open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(GRADE_COLUMNS), quoting=csv.QUOTE_NONNUMERIC)
            w.writeheader()
            w.writerows(rows)
    return rows
