"""Grading a folder of submitted exercise notebooks: run each one, read its checks' own results.

**What is graded.** Each submission is matched to an exercise (``exercise=`` if given, else the
``exNN`` in its file name, else the exercise most of whose checks its code calls) and scored
against that exercise's *full* list of checks, :data:`EXERCISES`, whatever cells the notebook
still has: a check that never ran (its cell deleted, or an earlier error) is ``not run``, not
left out. ``score`` = passed checks / the exercise's checks.

**Where the results come from.** Not from the printed text: a line ``[PASS] check_x`` printed by
anyone counts for nothing. The grader writes a session file holding a fresh random key and
starts the kernel with :data:`~._record.SESSION_ENV` naming it; the first cell it runs (before
the student's) imports :mod:`._record`, which reads the key and deletes the file. Each real
check then appends a line, signed with an HMAC of the key, to a results file in the grader's
private folder, and only lines whose signature verifies count (see :mod:`._record`). A
``check_x`` redefined or replaced in the notebook writes no signed line, so it does not count;
a check run on the package's own function (``check_boxes(ex.reference.mask_to_boxes)``) is
recorded as such and does not count either. A check run several times counts as failed if any
run failed.

**What it cannot detect** (:data:`FEEDBACK_NOTE`, printed with every report): the student's code
runs in the same process as the checks, so code written to defeat the grader (reading the key
from memory, calling the package's private modules, monkeypatching a check or the reference)
can forge a pass; the grader flags source that touches those internals (``notes``) but a
determined student can hide it. It cannot tell copied code (the solutions are public) from the
student's own, nor outputs hard-coded for the checked inputs, nor a check cell edited to run
fewer cases or other seeds. The grade is feedback for learning, not an exam.

Executing a submission runs the student's code with your permissions: grade in a container or a
throwaway account if that matters to you.
"""

from __future__ import annotations

import csv
import json
import os
import re
import secrets
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .._utils import atomic_path
from ._record import SESSION_ENV, sign

__all__ = [
    "EXERCISES",
    "FEEDBACK_NOTE",
    "GRADE_COLUMNS",
    "called_checks",
    "cell_errors",
    "grade_notebooks",
    "identify_exercise",
    "read_results",
]

#: The checks of each exercise notebook, in the order the notebook calls them: what a submission
#: of that exercise is scored against.
EXERCISES: dict[str, tuple[str, ...]] = {
    "ex01_dhn_nce": ("check_hard_negative_weights", "check_dhn_nce"),
    "ex02_gscorecam": (
        "check_channel_selection",
        "check_channel_masks",
        "check_gscorecam_weights",
        "check_combine_maps",
        "check_gscorecam_map",
    ),
    "ex03_boxes": ("check_saliency_to_mask", "check_boxes"),
    "ex04_weak": ("check_mean_dice", "check_interpretation"),
}

#: What every report says about the grade.
FEEDBACK_NOTE = (
    "These scores are feedback for learning, not an exam. A check passes only when the package's "
    "own check ran on the notebook's function and agreed with the reference (printed [PASS] "
    "lines do not count; a deleted check counts as not run). The grader cannot detect copied "
    "code (the solutions are public), outputs hard-coded for the checked inputs, a check cell "
    "edited to run fewer cases or another seed, or code written to defeat it from inside the "
    "kernel (reading its key, monkeypatching a check or the reference); 'notes' flags source "
    "that touches the grader's internals, but it can be hidden. Grade understanding with the "
    "written reflection and an 'explain your code' question."
)

GRADE_COLUMNS = (
    "notebook",
    "exercise",
    "score",
    "passed",
    "failed",
    "not_run",
    "checks",
    "errors",
    "notes",
    "seconds",
)
_CALL = re.compile(r"(?<!def )\b(check_[A-Za-z0-9_]+)\s*\(")
_NUMBER = re.compile(r"(?<![A-Za-z0-9])ex(\d\d)(?![0-9])")
# Source that reaches into the grader's machinery, flagged in the report (not scored).
_SUSPECT = re.compile(
    r"\b_record\b|\b_core\b|\brun_check\b|\bwrite_record\b|__closure__|MEDCLIPSAM_GRADING"
    r"|\bgc\.get_objects|/proc/|\bsys\._getframe|\bsetattr\s*\(\s*(ex|medclipsam)\b"
    r"|\b(ex|exercises|reference|R)\.\w+\s*=(?!=)|\bdef\s+check_\w+"
    r"|\b(ex|exercises)\.reference\b|\bimport\s+reference\b"
)


def called_checks(nb: Any) -> list[str]:
    """The ``check_*`` functions a notebook's code calls (comments aside), in order: what it
    *claims* to check, used only to guess its exercise; never a grade."""
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


def cell_errors(nb: Any) -> list[str]:
    """The errors an executed notebook's cells raised (``"cell 7: NameError: ..."``, the whole
    message: a failed check's feedback spans several lines)."""
    errors = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        for o in cell.get("outputs", []):
            if o.get("output_type") == "error":
                text = str(o.get("evalue", "")).strip()
                errors.append(
                    f"cell {i}: {o.get('ename', 'Error')}" + (f": {text}" if text else "")
                )
    return errors


def identify_exercise(nb: Any, path: str | Path, exercise: str | None = None) -> str | None:
    """The exercise a submission answers: ``exercise`` if given, else the one whose ``exNN``
    its file name carries, else the one most of whose checks its code calls (None on a tie or
    when it calls none)."""
    if exercise is not None:
        if exercise not in EXERCISES:
            raise ValueError(f"unknown exercise {exercise!r}; one of {', '.join(EXERCISES)}")
        return exercise
    numbers = set(_NUMBER.findall(Path(path).stem))
    named = [name for name in EXERCISES if name[2:4] in numbers]
    if len(named) == 1:
        return named[0]
    called = set(called_checks(nb))
    overlap = {name: len(called & set(checks)) for name, checks in EXERCISES.items()}
    best = max(overlap.values())
    winners = [name for name, n in overlap.items() if n == best]
    return winners[0] if best > 0 and len(winners) == 1 else None


def read_results(path: str | Path, key: bytes) -> tuple[dict[str, dict], int]:
    """The checks' own results from a session's results file: ``{check: {"passed": bool,
    "package_code": bool, "runs": int}}`` (failed if any run failed; package code if any run
    checked the package's own function), and how many lines failed their signature."""
    results: dict[str, dict] = {}
    forged = 0
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return results, 0
    for line in lines:
        try:
            entry = json.loads(line)
            body, mac = entry["record"], entry["mac"]
            ok = isinstance(body, str) and isinstance(mac, str)
            ok = ok and secrets.compare_digest(sign(key, body), mac)
            record = json.loads(body) if ok else None
        except (ValueError, KeyError, TypeError):
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("check"), str):
            forged += 1
            continue
        r = results.setdefault(record["check"], {"passed": True, "package_code": False, "runs": 0})
        r["passed"] = r["passed"] and bool(record.get("passed"))
        r["package_code"] = r["package_code"] or bool(record.get("package_code"))
        r["runs"] += 1
    return results, forged


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


def _inject_setup(nb: Any) -> None:
    """Put the grader's cell first: it opens the results channel before any student code runs."""
    from nbformat.v4 import new_code_cell

    cell = new_code_cell(
        "# Injected by the grader, run before your code: the checks report their results to the\n"
        "# grader directly (printed text is not read).\n"
        "import medclipsam.exercises._record"
    )
    cell.metadata["tags"] = ["injected-grader-setup"]
    nb.cells.insert(0, cell)
    cell.id = "injected-grader-setup"


def _row(label: str, exercise: str | None, **fields: Any) -> dict:
    row = dict.fromkeys(GRADE_COLUMNS, "")
    row.update(notebook=label, exercise=exercise or "", score=0.0, passed=0, failed=0, not_run=0)
    row.update(seconds=0.0)
    row.update(fields)
    return row


def _grade_one(
    path: Path,
    label: str,
    parameters: Mapping[str, Any],
    timeout: int,
    kernel_name: str,
    out_dir: Path | None,
    exercise: str | None = None,
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
        return _row(label, exercise, errors=f"{path}: not a readable notebook ({e})")
    name = identify_exercise(nb, path, exercise)
    notes = []
    suspect = sorted(
        {
            m.group(0).strip()
            for c in nb.cells
            if c.cell_type == "code"
            for m in _SUSPECT.finditer(c.source)
        }
    )
    if suspect:
        notes.append(
            "source touches the checks or the grader's machinery ("
            + ", ".join(f"`{t}`" for t in suspect)
            + "): read the notebook"
        )
    _inject(nb, parameters)
    _inject_setup(nb)
    run_error = ""
    key = secrets.token_bytes(32)
    with (
        tempfile.TemporaryDirectory(prefix="grade_") as work,
        tempfile.TemporaryDirectory(prefix="grader_") as private,
    ):
        session, results = Path(private) / "session.json", Path(private) / "results.jsonl"
        fd = os.open(session, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"key": key.hex(), "results": str(results)}, fh)
        client = NotebookClient(
            nb,
            timeout=timeout,
            kernel_name=kernel_name,
            allow_errors=True,
            resources={"metadata": {"path": work}},
        )
        try:
            client.execute(env={**os.environ, SESSION_ENV: str(session)})
        except Exception as e:  # noqa: BLE001 - a timeout or dead kernel ends this notebook only
            run_error = f"execution stopped: {type(e).__name__}: {str(e).strip()}"
        if session.exists():
            notes.append("the grader's setup cell did not run: no check result could be read")
        recorded, forged = read_results(results, key)
    errors = cell_errors(nb)
    if run_error:
        errors.append(run_error)
    if forged:
        notes.append(f"{forged} result line(s) with a wrong signature (ignored)")
    if out_dir is not None:
        with atomic_path(out_dir / "executed" / label.replace("/", "__")) as tmp:
            nbformat.write(nb, tmp)
    if name is None:
        notes.append(
            "could not tell which exercise this is (name the file exNN_..., or pass exercise=)"
        )
        return _row(
            label,
            None,
            errors="\n\n".join(errors),
            notes="; ".join(notes),
            seconds=round(time.perf_counter() - t0, 1),
        )
    status: dict[str, str] = {}
    for check in EXERCISES[name]:
        r = recorded.get(check)
        if r is None:
            status[check] = "not run"
        elif r["package_code"]:
            status[check] = "package code"
            notes.append(f"{check} ran on the package's own function (not counted)")
        else:
            status[check] = "pass" if r["passed"] else "fail"
    missing = [c for c, v in status.items() if v == "not run"]
    if missing:
        notes.append("not run: " + ", ".join(missing))
    others = sorted(set(recorded) - set(EXERCISES[name]))
    if others:
        notes.append(f"checks of another exercise ran (not counted): {', '.join(others)}")
    passed = sum(v == "pass" for v in status.values())
    failed = sum(v in ("fail", "package code") for v in status.values())
    return _row(
        label,
        name,
        score=round(passed / len(status), 4),
        passed=passed,
        failed=failed,
        not_run=len(missing),
        checks=" ".join(f"{k}:{v.replace(' ', '_')}" for k, v in status.items()),
        errors="\n\n".join(errors),
        notes="; ".join(notes),
        seconds=round(time.perf_counter() - t0, 1),
    )


def grade_notebooks(
    paths: Iterable[str | Path],
    *,
    parameters: Mapping[str, Any] | None = None,
    timeout: int = 600,
    kernel_name: str = "python3",
    out_dir: str | Path | None = None,
    exercise: str | None = None,
) -> list[dict]:
    """Run each notebook of ``paths`` (files, or folders whose ``*.ipynb`` are taken) and grade it.

    ``parameters`` are set after each notebook's ``parameters`` cell (e.g. ``{"SMOKE": True}``
    for a quick run); ``timeout`` is per cell, in seconds; ``exercise`` (a key of
    :data:`EXERCISES`) says which exercise every notebook answers, else each one's is guessed
    (see :func:`identify_exercise`). Returns one row per notebook with the columns of
    :data:`GRADE_COLUMNS`: ``notebook`` is the file name (``folder/name`` when two submissions
    share one), ``score`` = passed checks / the exercise's checks (a check that never ran
    counts as not passed), ``checks`` each check's ``pass``, ``fail``, ``not_run`` or
    ``package_code`` (run on the package's own function), ``errors`` the full text of each error
    a cell raised (a blank line between two), ``notes`` what the teacher should know (checks
    not run, results that failed their signature, source touching the grader's machinery).
    The scores are feedback, not an exam: see :data:`FEEDBACK_NOTE` and the module docstring
    for what the grader cannot detect. With ``out_dir``, writes ``out_dir/grades.csv``,
    ``out_dir/ABOUT.txt`` (:data:`FEEDBACK_NOTE`) and the executed notebooks (with the feedback
    printed in them) under ``out_dir/executed/``.
    """
    if exercise is not None and exercise not in EXERCISES:
        raise ValueError(f"unknown exercise {exercise!r}; one of {', '.join(EXERCISES)}")
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
        _grade_one(f, label, parameters or {}, timeout, kernel_name, out, exercise)
        for f, label in zip(files, labels)
    ]
    if out is not None:
        # Every text field quoted: an error message spans lines and may hold commas and quotes,
        # which csv.reader / pandas.read_csv / spreadsheets then read back as one cell.
        with atomic_path(out / "grades.csv") as tmp, open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(GRADE_COLUMNS), quoting=csv.QUOTE_NONNUMERIC)
            w.writeheader()
            w.writerows(rows)
        with atomic_path(out / "ABOUT.txt") as tmp:
            Path(tmp).write_text(FEEDBACK_NOTE + "\n")
    return rows
