"""Checks of the take-aways a lesson states (medclipsam.teaching), shared by the notebook runs of
tests/test_notebooks.py and the executed copies checked in tests/test_lesson_claims.py."""

from __future__ import annotations

import nbformat

from medclipsam.teaching import MIME, check_claim, claims_in

#: Lessons that state computed take-aways: each must record at least one claim when it runs.
LESSONS_WITH_CLAIMS = ("00_", "02_", "03_", "04_", "05_")


def _printed(nb: nbformat.NotebookNode) -> str:
    """Everything the notebook printed or displayed as text, except the claims themselves."""
    parts = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for o in cell.get("outputs", []):
            if o.get("output_type") == "stream":
                parts.append(o.get("text", ""))
            elif MIME not in o.get("data", {}):
                parts.append(str(o.get("data", {}).get("text/plain", "")))
    return "\n".join(parts)


def _numbers(claim: dict) -> list[float]:
    if claim["kind"] == "compare":
        return [e["mean"] for e in claim["results"].values()]
    if claim["kind"] == "versus_paper":
        return list(claim["toy"].values())
    return []


def claims_problems(nb: nbformat.NotebookNode, name: str) -> list[str]:
    """What is wrong with the claims of an executed lesson: a claim its numbers contradict, a
    number a claim rests on that the lesson never printed, or no claim where one is expected."""
    claims = claims_in(nb)
    found = []
    if name.startswith(LESSONS_WITH_CLAIMS) and not claims:
        found.append(f"{name}: states no computed take-away (medclipsam.teaching.state)")
    printed = _printed(nb)
    for c in claims:
        found += [f"{name}: {c['text']!r}: {p}" for p in check_claim(c)]
        digits = int(c.get("digits", 3))
        for v in _numbers(c):
            if f"{v:.{digits}f}" not in printed:
                found.append(
                    f"{name}: {c['text']!r} rests on {v:.{digits}f}, which the lesson's tables "
                    "do not show"
                )
    return found
