"""Exercise 4: evaluating weak supervision and reading the table.

* ``mean_dice(preds, gts) -> float``: the mean over images of :func:`medclipsam.metrics.dice`
  (two empty masks: Dice 1);
* ``interpret(table) -> dict``: answers read off a table ``{setting: {"dice", "ci"}}`` (see
  :func:`.reference.interpret`). It is checked on the student's own table AND on random tables, so
  an answer typed in from the student's expectations (not computed from the table) fails.

:func:`table_from_reproduce` turns :func:`medclipsam.reproduce.reproduce`'s rows into that table;
:func:`compare_with_table` checks a ``mean_dice`` against the table's Dice column with a message
that says what to look at; :func:`summarize_table` writes the notebook's closing sentence from the
table (weak supervision clearly better, clearly worse, or within the overlap of the intervals).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..metrics import dice, iou
from . import reference
from ._core import Case, CheckResult, run_check, seeds

__all__ = [
    "ANSWER_KEYS",
    "check_interpretation",
    "check_mean_dice",
    "compare_with_table",
    "format_table",
    "summarize_table",
    "table_from_reproduce",
    "weak_verdict",
]

#: The keys ``interpret`` must return.
ANSWER_KEYS = ("best_method", "weak_helped", "weak_gain", "clear_gain")


# -- 4a: mean Dice --------------------------------------------------------------------------------


def _random_pair(r: np.random.Generator, kind: str) -> tuple[np.ndarray, np.ndarray]:
    h, w = int(r.integers(6, 40)), int(r.integers(6, 40))

    def blob() -> np.ndarray:
        m = np.zeros((h, w), bool)
        y0, x0 = int(r.integers(0, h - 2)), int(r.integers(0, w - 2))
        m[y0 : y0 + int(r.integers(2, h)), x0 : x0 + int(r.integers(2, w))] = True
        return m

    empty = np.zeros((h, w), bool)
    if kind == "both_empty":
        return empty, empty.copy()
    if kind == "pred_empty":
        return empty, blob()
    if kind == "gt_empty":
        return blob(), empty
    return blob(), blob()


def _dice_cases(n_trials: int, seed: int) -> list[Case]:
    r = np.random.default_rng(seed)
    same = _random_pair(r, "both")[0]
    cases = [
        Case("one image, identical masks", ([same], [same.copy()])),
        Case(
            "one image, both masks empty (a correct 'nothing here': Dice 1)",
            ([np.zeros((5, 6), bool)], [np.zeros((5, 6), bool)]),
        ),
        Case(
            "two images, one with both masks empty",
            tuple(map(list, zip(_random_pair(r, "both"), _random_pair(r, "both_empty")))),
        ),
        Case(
            "three images of different sizes, one prediction empty",
            tuple(
                map(
                    list,
                    zip(
                        _random_pair(r, "both"),
                        _random_pair(r, "pred_empty"),
                        _random_pair(r, "both"),
                    ),
                )
            ),
        ),
    ]
    for s in seeds(seed, n_trials):
        rr = np.random.default_rng(s)
        n = int(rr.integers(1, 8))
        kinds = rr.choice(["both", "both", "both", "both_empty", "pred_empty", "gt_empty"], n)
        pairs = [_random_pair(rr, str(k)) for k in kinds]
        cases.append(
            Case(
                f"random (seed {s}); {n} image(s) of different sizes",
                ([p for p, _ in pairs], [g for _, g in pairs]),
            )
        )
    return cases


def _as_float(x: Any) -> tuple[float | None, str | None]:
    if isinstance(x, torch.Tensor):
        if x.numel() != 1:
            return None, f"returned a tensor of shape {tuple(x.shape)}; return one number"
        x = x.item()
    if isinstance(x, np.ndarray):
        if x.size != 1:
            return None, (
                f"returned an array of shape {x.shape}; return one number (the mean over images)"
            )
        x = x.item()
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, float, np.integer, np.floating)):
        return None, f"returned a {type(x).__name__}; return a float"
    return float(x), None


def _compare_dice(expected: float, got: Any, case: Case) -> str | None:
    v, problem = _as_float(got)
    if problem:
        return problem
    if math.isnan(v):
        return f"returned NaN; expected {expected:.6f}"
    if abs(v - expected) <= 1e-9:
        return None
    preds, gts = case.args
    per = [round(dice(p, g), 4) for p, g in zip(preds, gts)]
    return f"expected {expected:.6f}, got {v:.6f} (per-image Dice: {per})"


#: The named mistakes of ``mean_dice``, most specific first (see :func:`_dice_mistakes`).
DICE_HINTS = {
    "empty_as_zero": "two empty masks counted as Dice 0; they are a correct 'nothing here': Dice 1.",
    "empty_left_out": "images with two empty masks were left out; they count, with Dice 1.",
    "pooled": (
        "you pooled the pixels of all images into one Dice; the table reports the MEAN "
        "of the per-image Dice (each image counts once, whatever its size)."
    ),
    "iou": "that is the mean IoU, |P & G| / |P | G|; Dice is 2 |P & G| / (|P| + |G|).",
    "nan_for_empty": (
        "two empty masks give 0 / 0: define their Dice as 1 (the model correctly found "
        "nothing), as medclipsam.metrics.dice does."
    ),
}


def _dice_mistakes(case: Case) -> list[tuple[str, float | None]]:
    """What each wrong ``mean_dice`` returns on this case (None where it is 0 / 0)."""
    preds, gts = case.args
    both_empty = [not p.any() and not g.any() for p, g in zip(preds, gts)]
    per = [dice(p, g) for p, g in zip(preds, gts)]
    kept = [d for d, e in zip(per, both_empty) if not e]
    inter = sum(int((p & g).sum()) for p, g in zip(preds, gts))
    total = sum(int(p.sum() + g.sum()) for p, g in zip(preds, gts))
    return [
        (
            DICE_HINTS["empty_as_zero"],
            float(np.mean([0.0 if e else d for d, e in zip(per, both_empty)])),
        ),
        (DICE_HINTS["empty_left_out"], float(np.mean(kept)) if kept else None),
        (DICE_HINTS["pooled"], 2 * inter / total if total else None),
        (DICE_HINTS["iou"], float(np.mean([iou(p, g) for p, g in zip(preds, gts)]))),
    ]


def _dice_matches(output: Any, variant: float, case: Case) -> bool | None:
    v, problem = _as_float(output)
    if problem or v is None or not math.isfinite(v):
        return None
    return abs(v - variant) <= 1e-9


def _diagnose_dice(got: Any, case: Case, expected: float) -> str | None:
    """The one hint that is not a wrong formula: NaN from 0 / 0 on two empty masks."""
    v, problem = _as_float(got)
    if problem or v is None:
        return None
    preds, gts = case.args
    if math.isnan(v) and any(not p.any() and not g.any() for p, g in zip(preds, gts)):
        return DICE_HINTS["nan_for_empty"]
    return None


def check_mean_dice(
    student_fn: Callable[[Sequence[np.ndarray], Sequence[np.ndarray]], float],
    *,
    n_trials: int = 10,
    seed: int = 0,
    strict: bool = False,
    verbose: bool = True,
) -> CheckResult:
    """Compare ``student_fn(preds, gts) -> float`` (lists of boolean masks, any sizes) with the
    mean of :func:`medclipsam.metrics.dice` (two empty masks: Dice 1)."""

    def run(fn: Callable, case: Case, args: tuple, kwargs: dict) -> Any:
        return fn(*args, **kwargs)

    return run_check(
        "check_mean_dice",
        student_fn,
        _dice_cases(n_trials, seed),
        run=run,
        reference=reference.mean_dice,
        compare=_compare_dice,
        mistakes=_dice_mistakes,
        matches=_dice_matches,
        diagnose=_diagnose_dice,
        strict=strict,
        verbose=verbose,
        success="random and edge cases: empty masks, one image, images of different sizes",
    )


# -- 4b: reading the table ------------------------------------------------------------------------


def table_from_reproduce(rows: Sequence[Mapping]) -> dict[str, dict]:
    """``{setting: {"dice": float, "ci": (low, high)}}`` from the rows
    :func:`medclipsam.reproduce.reproduce` returns (or its ``table.csv`` read with ``csv``)."""
    table: dict[str, dict] = {}
    for row in rows:
        ci = row["dice_ci"]
        if isinstance(ci, str):
            lo, hi = (float(v) for v in ci.split("-"))
        else:
            lo, hi = (float(v) for v in ci)
        table[str(row["setting"])] = {"dice": float(row["dice"]), "ci": (lo, hi)}
    return table


def _random_table(r: np.random.Generator, label: str) -> Case:
    names = [reference.ZERO_SHOT, reference.WEAK, reference.FULL]
    if r.random() < 0.4:
        names.insert(2, "weak, 20% most uncertain dropped")
    table = {}
    for name in names:
        d = round(float(r.uniform(0.2, 0.95)), 4)
        half_lo, half_hi = r.uniform(0.005, 0.12, 2)
        table[name] = {
            "dice": d,
            "ci": (round(max(0.0, d - half_lo), 3), round(min(1.0, d + half_hi), 3)),
        }
    return Case(label, (table,))


def _fixed_tables() -> list[Case]:
    def t(zs, weak, full, zs_ci, weak_ci, extra=None):
        out = {
            reference.ZERO_SHOT: {"dice": zs, "ci": zs_ci},
            reference.WEAK: {"dice": weak, "ci": weak_ci},
        }
        if extra is not None:
            out["weak, 20% most uncertain dropped"] = extra
        out[reference.FULL] = {"dice": full, "ci": (full - 0.05, full + 0.05)}
        return out

    return [
        Case(
            "weak supervision hurt (weak below zero-shot)",
            (t(0.70, 0.62, 0.85, (0.65, 0.75), (0.55, 0.69)),),
        ),
        Case(
            "weak clearly worse: its interval lies entirely below zero-shot's (a clear loss)",
            (t(0.75, 0.55, 0.85, (0.70, 0.80), (0.48, 0.62)),),
        ),
        Case(
            "weak better, but the intervals overlap (not a clear gain)",
            (t(0.60, 0.64, 0.80, (0.52, 0.68), (0.57, 0.71)),),
        ),
        Case(
            "weak better and the intervals do not overlap (a clear gain)",
            (t(0.50, 0.70, 0.80, (0.45, 0.55), (0.66, 0.74)),),
        ),
        Case(
            "weak better than full supervision (it happens on small test sets)",
            (t(0.55, 0.83, 0.80, (0.50, 0.60), (0.78, 0.88)),),
        ),
        Case(
            "the uncertainty-filtered run is the best",
            (
                t(
                    0.55,
                    0.66,
                    0.70,
                    (0.50, 0.60),
                    (0.61, 0.71),
                    extra={"dice": 0.74, "ci": (0.70, 0.78)},
                ),
            ),
        ),
    ]


def _compare_answers(expected: dict, got: Any, case: Case) -> str | None:
    (table,) = case.args
    if not isinstance(got, Mapping):
        return f"returned a {type(got).__name__}; return a dict with the keys {list(ANSWER_KEYS)}"
    missing = [k for k in ANSWER_KEYS if k not in got]
    if missing:
        return f"the answer has no key(s) {missing}; expected keys {list(ANSWER_KEYS)}"
    wrong = []
    best = max(float(v["dice"]) for v in table.values())
    tied = [s for s, v in table.items() if float(v["dice"]) == best]
    if got["best_method"] not in tied:
        wrong.append(
            f"best_method: expected {' or '.join(map(repr, tied))}, got {got['best_method']!r}"
        )
    for key in ("weak_helped", "clear_gain"):
        if not isinstance(got[key], (bool, np.bool_)):
            wrong.append(f"{key}: expected a bool (True/False), got {got[key]!r}")
        elif bool(got[key]) != expected[key]:
            wrong.append(f"{key}: expected {expected[key]}, got {bool(got[key])}")
    try:
        gain = float(got["weak_gain"])
    except (TypeError, ValueError):
        wrong.append(f"weak_gain: expected a number, got {got['weak_gain']!r}")
    else:
        if not abs(gain - expected["weak_gain"]) <= 1e-9:
            wrong.append(f"weak_gain: expected {expected['weak_gain']:.4f}, got {gain:.4f}")
    if not wrong:
        return None
    rows = "; ".join(
        f"{s}: Dice {v['dice']:.4f} [{v['ci'][0]:.3f}, {v['ci'][1]:.3f}]" for s, v in table.items()
    )
    return "\n    ".join(wrong + [f"the table: {rows}"])


#: The named mistakes of ``interpret``, most specific first (see :func:`_answer_mistakes`).
ANSWER_HINTS = {
    "gain_sign": "weak_gain has the wrong sign: it is weak minus zero-shot Dice.",
    "clear_by_means": (
        "clear_gain compares the means; it asks whether the INTERVALS separate: "
        "weak's lower end above zero-shot's upper end."
    ),
    "clear_when_overlap": (
        "clear_gain is True when the intervals do NOT overlap (and weak is above); yours is True "
        "when they overlap."
    ),
    "clear_either_way": (
        "clear_gain is True only when weak is clearly ABOVE zero-shot (weak's lower end above "
        "zero-shot's upper end); intervals that separate with weak BELOW are a clear loss, not a "
        "gain."
    ),
    "best_is_min": "best_method is the row with the HIGHEST Dice (max, not min).",
}


def _answer_mistakes(case: Case) -> list[tuple[str, dict]]:
    """What each wrong ``interpret`` answers on this case: the one key it gets wrong."""
    (table,) = case.args
    zs, weak = table[reference.ZERO_SHOT], table[reference.WEAK]
    (zl, zh), (wl, wh) = (map(float, zs["ci"]), map(float, weak["ci"]))
    overlap = wl <= zh and zl <= wh
    worst = min(table, key=lambda s: float(table[s]["dice"]))
    return [
        (ANSWER_HINTS["gain_sign"], {"weak_gain": float(zs["dice"]) - float(weak["dice"])}),
        (ANSWER_HINTS["clear_by_means"], {"clear_gain": float(weak["dice"]) > float(zs["dice"])}),
        (ANSWER_HINTS["clear_when_overlap"], {"clear_gain": overlap}),
        (ANSWER_HINTS["clear_either_way"], {"clear_gain": not overlap}),
        (ANSWER_HINTS["best_is_min"], {"best_method": worst}),
    ]


def _answer_matches(output: Any, variant: dict, case: Case) -> bool | None:
    """Whether ``output`` gives the variant's answer on the variant's one key."""
    if not isinstance(output, Mapping):
        return None
    ((key, want),) = variant.items()
    if key not in output:
        return None
    have = output[key]
    if key == "weak_gain":
        try:
            have = float(have)
        except (TypeError, ValueError):
            return None
        return math.isfinite(have) and abs(have - want) <= 1e-9
    if key == "best_method":
        # ties for the best row: any tied setting is right, so a tie says nothing
        (table,) = case.args
        best = max(float(v["dice"]) for v in table.values())
        if sum(float(v["dice"]) == best for v in table.values()) > 1:
            return None
        return have == want
    if not isinstance(have, (bool, np.bool_)):
        return None
    return bool(have) == want


def _constant_answers(outcomes: list[tuple[Case, Any, Any]]) -> str | None:
    """A key whose answer never changes while the right answer does was typed in, not computed."""
    typed = []
    for key in ("best_method", "weak_helped", "clear_gain"):
        want = {repr(e[key]) for _, e, _ in outcomes}
        have = {repr(g.get(key)) if isinstance(g, Mapping) else None for _, _, g in outcomes}
        if len(want) > 1 and len(have) == 1:
            typed.append(key)
    if typed:
        return (
            f"{', '.join(typed)} never change(s) from one table to the next: compute the answers "
            "from the `table` argument instead of typing in what you expect."
        )
    return None


def check_interpretation(
    student_fn: Callable[[Mapping], Mapping],
    table: Mapping | None = None,
    *,
    n_trials: int = 12,
    seed: int = 0,
    strict: bool = False,
    verbose: bool = True,
) -> CheckResult:
    """Compare ``student_fn(table) -> {"best_method", "weak_helped", "weak_gain",
    "clear_gain"}`` with :func:`.reference.interpret` on your ``table`` (if given) and on
    ``n_trials`` random tables plus edge cases (weak worse than zero-shot, clearly worse,
    overlapping intervals, weak above full supervision, a filtered run best). Ties for the best row accept
    any tied setting."""
    cases = []
    if table is not None:
        cases.append(Case("your table", (dict(table),)))
    cases += _fixed_tables()
    cases += [
        _random_table(np.random.default_rng(s), f"random table (seed {s})")
        for s in seeds(seed, n_trials)
    ]

    def run(fn: Callable, case: Case, args: tuple, kwargs: dict) -> Any:
        return fn(*args, **kwargs)

    return run_check(
        "check_interpretation",
        student_fn,
        cases,
        run=run,
        reference=reference.interpret,
        compare=_compare_answers,
        mistakes=_answer_mistakes,
        matches=_answer_matches,
        after=_constant_answers,
        strict=strict,
        verbose=verbose,
        success=("your table and " if table is not None else "") + "tables where weak supervision "
        "helps, hurts, or is within the noise",
    )


def format_table(table: Mapping) -> str:
    """The table as aligned text: setting, Dice and its interval, one row each."""
    return "\n".join(
        f"{s:36s} Dice {float(v['dice']):.4f}  [{v['ci'][0]:.3f}, {v['ci'][1]:.3f}]"
        for s, v in table.items()
    )


def weak_verdict(table: Mapping) -> str:
    """``"better"`` when weak supervision's interval lies entirely above zero-shot's, ``"worse"``
    when entirely below, ``"overlap"`` otherwise (the test set cannot tell them apart)."""
    zs, weak = table[reference.ZERO_SHOT], table[reference.WEAK]
    if float(weak["ci"][0]) > float(zs["ci"][1]):
        return "better"
    if float(weak["ci"][1]) < float(zs["ci"][0]):
        return "worse"
    return "overlap"


def summarize_table(table: Mapping) -> str:
    """One sentence read off the table: the best setting, weak minus zero-shot Dice, and whether
    the intervals say it is a clear gain, a clear loss, or not distinguishable from noise."""
    best = max(table, key=lambda s: float(table[s]["dice"]))
    zs, weak = table[reference.ZERO_SHOT], table[reference.WEAK]
    gain = float(weak["dice"]) - float(zs["dice"])
    numbers = (
        f"weakly supervised {float(weak['dice']):.3f} "
        f"[{float(weak['ci'][0]):.3f}, {float(weak['ci'][1]):.3f}] against zero-shot "
        f"{float(zs['dice']):.3f} [{float(zs['ci'][0]):.3f}, {float(zs['ci'][1]):.3f}] "
        f"({gain:+.3f} Dice)"
    )
    verdict = weak_verdict(table)
    if verdict == "better":
        said = "weak supervision helped, and its interval lies entirely above zero-shot's: a clear gain"
    elif verdict == "worse":
        said = (
            "weak supervision hurt, and its interval lies entirely below zero-shot's: a clear loss"
        )
    else:
        direction = "higher" if gain > 0 else "lower" if gain < 0 else "the same"
        said = (
            f"weak supervision scored {direction}, but the intervals overlap: on this test set "
            "the difference may be noise"
        )
    return f"Best: {best} (Dice {float(table[best]['dice']):.3f}). {numbers}: {said}."


def compare_with_table(
    mean_dice_fn: Callable[[Sequence[np.ndarray], Sequence[np.ndarray]], float],
    predictions: Mapping[str, Sequence[np.ndarray]],
    gts: Sequence[np.ndarray],
    table: Mapping,
    *,
    tol: float = 1e-3,
) -> None:
    """Print ``mean_dice_fn`` on each setting's test predictions beside the table's Dice, and
    raise ``AssertionError`` saying what was expected and what to check when one differs."""
    wrong = []
    for setting, preds in predictions.items():
        mine = float(mean_dice_fn(list(preds), list(gts)))
        want = float(table[setting]["dice"])
        ok = math.isfinite(mine) and abs(mine - want) <= tol
        print(
            f"{setting:20s} your mean Dice {mine:.4f}   the table {want:.4f}"
            + ("" if ok else "   <- differs")
        )
        if not ok:
            wrong.append(f"{setting}: your mean_dice gives {mine:.4f}, the table says {want:.4f}")
    if wrong:
        raise AssertionError(
            "your mean_dice does not reproduce the table's Dice column (expected the same number "
            f"to within {tol:g} for every setting):\n  " + "\n  ".join(wrong) + "\n"
            "Check: (1) that check_mean_dice above passes (run its cell again after any edit); "
            "(2) that the predictions and ground truths are paired image by image, in the order "
            "of the test split; (3) that your function makes boolean masks (np.asarray(m, "
            "dtype=bool)) rather than adding 0/255 values; (4) that the table is from this run: "
            "the run resumes from OUT_DIR, so after changing SEED, TASK, N_IMAGES or EPOCHS "
            "delete OUT_DIR (or choose a new one) and run the notebook again."
        )
