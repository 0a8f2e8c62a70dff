"""Exercise 4: evaluating weak supervision and reading the table.

* ``mean_dice(preds, gts) -> float``: the mean over images of :func:`medclipsam.metrics.dice`
  (two empty masks: Dice 1);
* ``interpret(table) -> dict``: answers read off a table ``{setting: {"dice", "ci",
  "dice_per_image"}}`` (see :func:`.reference.interpret`); whether weak supervision is a clear
  gain comes from the paired difference, weak minus zero-shot Dice on the same test images, and
  its 95 % bootstrap interval (not from the overlap of the two separate intervals). It is checked
  on the student's own table AND on random tables, so an answer typed in from the student's
  expectations (not computed from the table) fails.

:func:`table_from_reproduce` turns :func:`medclipsam.reproduce.reproduce`'s rows into that table;
:func:`compare_with_table` checks a ``mean_dice`` against the table's Dice column with a message
that says what to look at; :func:`summarize_table` writes the notebook's closing sentence from the
table (weak supervision clearly better, clearly worse, or not told apart by the paired difference).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..metrics import dice, iou, summarize
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
    """``{setting: {"dice": float, "ci": (low, high), "dice_per_image": [...]}}`` from the rows
    :func:`medclipsam.reproduce.reproduce` returns: ``dice_per_image`` is each test image's Dice
    (the same images in the same order for every setting) and ``dice`` their exact mean. Rows read
    back from ``table.csv`` (with ``csv``) have no per-image Dice: the table then has the means
    and intervals only, and :func:`.reference.interpret` cannot compute the paired difference."""
    table: dict[str, dict] = {}
    for row in rows:
        ci = row["dice_ci"]
        if isinstance(ci, str):
            lo, hi = (float(v) for v in ci.split("-"))
        else:
            lo, hi = (float(v) for v in ci)
        entry: dict[str, Any] = {"dice": float(row["dice"]), "ci": (lo, hi)}
        if row.get("dice_per_image") is not None:
            per = [float(v) for v in row["dice_per_image"]]
            entry["dice_per_image"] = per
            entry["dice"] = float(np.mean(per))  # the row's Dice is rounded to 4 decimals
        table[str(row["setting"])] = entry
    return table


#: A paired interval whose lower end is this close to 0 (as a share of its width) is borderline:
#: another bootstrap seed or number of resamples may put it on the other side, so either
#: ``clear_gain`` is accepted there (and the random tables avoid it).
BORDERLINE = 0.1


def _borderline(diff: Mapping) -> bool:
    lo, hi = float(diff["ci_low"]), float(diff["ci_high"])
    return abs(lo) <= BORDERLINE * (hi - lo) + 1e-12


def _row(per_image: np.ndarray) -> dict:
    """A table row from per-image Dice: their mean, their own 95 % bootstrap interval (as
    :func:`medclipsam.reproduce.reproduce` computes it) and the values."""
    per = [round(float(v), 4) for v in np.clip(per_image, 0.0, 1.0)]
    st = summarize([{"dice": v} for v in per], ["dice"], n_boot=1000, seed=0)["dice"]
    return {
        "dice": float(np.mean(per)),
        "ci": (round(st["ci_low"], 3), round(st["ci_high"], 3)),
        "dice_per_image": per,
    }


def _random_table(r: np.random.Generator, label: str) -> Case:
    """Zero-shot Dice that differ a lot from image to image (easy and hard images), weak
    supervision a gain, a loss or about nothing on top of each image's zero-shot Dice, with its
    own image-to-image noise; never borderline (see :data:`BORDERLINE`)."""
    filtered = r.random() < 0.4
    kind = str(r.choice(["gain", "loss", "noise"]))
    while True:
        n = int(r.integers(8, 41))
        base = r.uniform(0.15, 0.95, n)
        zs = np.clip(base + r.normal(0.0, 0.03, n), 0.0, 1.0)
        delta = {"gain": r.uniform(0.02, 0.12), "loss": -r.uniform(0.02, 0.12)}.get(
            kind, r.uniform(-0.02, 0.02)
        )
        weak = zs + delta + r.normal(0.0, r.uniform(0.01, 0.1), n)
        table = {reference.ZERO_SHOT: _row(zs), reference.WEAK: _row(weak)}
        if filtered:
            table["weak, 20% most uncertain dropped"] = _row(weak + r.normal(0.0, 0.05, n))
        table[reference.FULL] = _row(base + r.uniform(-0.05, 0.2) + r.normal(0.0, 0.03, n))
        if not _borderline(reference.paired_gain(table)):
            return Case(f"{label}, {n} test images", (table,))


def _fixed_tables() -> list[Case]:
    n = 20
    r = np.random.default_rng(2024)
    base = r.permutation(np.linspace(0.3, 0.9, n))  # easy and hard images: a wide spread

    def t(weak_shift, weak_noise, *, zs=base, full_shift=0.12, extra=None):
        noise = np.random.default_rng(7).normal(0.0, 1.0, n)
        noise = (noise - noise.mean()) / noise.std()  # the shifts are exact
        out = {
            reference.ZERO_SHOT: _row(zs),
            reference.WEAK: _row(zs + weak_shift + weak_noise * noise),
        }
        if extra is not None:
            out["weak, 20% most uncertain dropped"] = _row(zs + extra)
        out[reference.FULL] = _row(zs + full_shift)
        return out

    narrow = 0.3 + 0.1 * base  # images much alike: narrow separate intervals
    return [
        Case(
            "weak supervision scored lower, and the paired interval includes 0",
            (t(-0.02, 0.08),),
        ),
        Case(
            "a clear loss: the paired interval lies below 0 (the separate intervals overlap)",
            (t(-0.10, 0.03),),
        ),
        Case(
            "a clear gain: the paired interval lies above 0 although the separate intervals "
            "overlap (weak wins on nearly every image)",
            (t(0.04, 0.02),),
        ),
        Case(
            "weak scored higher, but the paired interval includes 0 (not a clear gain)",
            (t(0.02, 0.10),),
        ),
        Case(
            "a clear gain: the paired interval lies above 0 and the separate intervals are apart",
            (t(0.30, 0.02, zs=narrow, full_shift=0.4),),
        ),
        Case(
            "weak better than full supervision (it happens on small test sets)",
            (t(0.08, 0.02, full_shift=0.05),),
        ),
        Case(
            "the uncertainty-filtered run is the best",
            (t(0.05, 0.02, full_shift=0.08, extra=0.1),),
        ),
    ]


def _paired_line(table: Mapping) -> str:
    try:
        d = reference.paired_gain(table)
    except (KeyError, ValueError):
        return ""
    return (
        f"; paired difference weak - zero-shot over the same {d['n']} images: "
        f"{d['mean']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]"
    )


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
    borderline = _borderline(reference.paired_gain(table))
    for key in ("weak_helped", "clear_gain"):
        if not isinstance(got[key], (bool, np.bool_)):
            wrong.append(f"{key}: expected a bool (True/False), got {got[key]!r}")
        elif bool(got[key]) != expected[key] and not (key == "clear_gain" and borderline):
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
    return "\n    ".join(wrong + [f"the table: {rows}{_paired_line(table)}"])


#: The named mistakes of ``interpret``, most specific first (see :func:`_answer_mistakes`).
ANSWER_HINTS = {
    "gain_sign": "weak_gain has the wrong sign: it is weak minus zero-shot Dice.",
    "clear_by_means": (
        "clear_gain compares the means only; a higher mean can be noise. It asks whether the 95 % "
        "interval of the PAIRED difference (weak minus zero-shot Dice, image by image) lies above 0."
    ),
    "clear_by_overlap": (
        "clear_gain compares the two separate intervals (weak's lower end above zero-shot's upper "
        "end); both settings are scored on the SAME images, so those intervals also carry how much "
        "the images differ from each other and overlap even when weak wins on nearly every image. "
        "Use the interval of the paired difference, weak minus zero-shot per image, and ask whether "
        "it lies above 0."
    ),
    "clear_either_way": (
        "clear_gain is True only when the paired interval lies ABOVE 0 (weak better); an interval "
        "entirely below 0 is a clear loss, not a gain."
    ),
    "clear_reversed": (
        "clear_gain has the direction reversed: the paired difference is weak MINUS zero-shot, and "
        "a gain is an interval above 0 (yours is True on a clear loss and False on a clear gain)."
    ),
    "best_is_min": "best_method is the row with the HIGHEST Dice (max, not min).",
}


def _answer_mistakes(case: Case) -> list[tuple[str, dict]]:
    """What each wrong ``interpret`` answers on this case: the one key it gets wrong."""
    (table,) = case.args
    zs, weak = table[reference.ZERO_SHOT], table[reference.WEAK]
    diff = reference.paired_gain(table)
    above, below = diff["ci_low"] > 0, diff["ci_high"] < 0
    worst = min(table, key=lambda s: float(table[s]["dice"]))
    return [
        (ANSWER_HINTS["gain_sign"], {"weak_gain": float(zs["dice"]) - float(weak["dice"])}),
        (ANSWER_HINTS["clear_by_means"], {"clear_gain": float(weak["dice"]) > float(zs["dice"])}),
        (ANSWER_HINTS["clear_by_overlap"], {"clear_gain": float(weak["ci"][0]) > float(zs["ci"][1])}),
        (ANSWER_HINTS["clear_either_way"], {"clear_gain": bool(above or below)}),
        (ANSWER_HINTS["clear_reversed"], {"clear_gain": bool(below)}),
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
    (table,) = case.args
    if key == "weak_gain":
        try:
            have = float(have)
        except (TypeError, ValueError):
            return None
        return math.isfinite(have) and abs(have - want) <= 1e-9
    if key == "best_method":
        # ties for the best row: any tied setting is right, so a tie says nothing
        best = max(float(v["dice"]) for v in table.values())
        if sum(float(v["dice"]) == best for v in table.values()) > 1:
            return None
        return have == want
    if key == "clear_gain" and _borderline(reference.paired_gain(table)):
        return None  # either answer is accepted there, so it says nothing
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
    "clear_gain"}`` with :func:`.reference.interpret` on your ``table`` (if given; it needs each
    row's ``dice_per_image``, see :func:`table_from_reproduce`) and on ``n_trials`` random tables
    plus edge cases (weak worse than zero-shot, a clear loss, a clear gain whose separate intervals
    overlap, a higher mean whose paired interval includes 0, weak above full supervision, a
    filtered run best). ``clear_gain`` is right when the 95 % interval of the paired difference,
    weak minus zero-shot per image (:func:`.reference.paired_gain`), lies above 0; where that
    interval's lower end is within :data:`BORDERLINE` of its width from 0, either answer is
    accepted. Ties for the best row accept any tied setting."""
    cases = []
    if table is not None:
        for setting in (reference.ZERO_SHOT, reference.WEAK):
            reference.per_image_dice(table, setting)  # a clear error before any case runs
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
        "helps, hurts, or is within the noise of the paired difference",
    )


def format_table(table: Mapping) -> str:
    """The table as aligned text: setting, Dice and its interval, one row each."""
    return "\n".join(
        f"{s:36s} Dice {float(v['dice']):.4f}  [{v['ci'][0]:.3f}, {v['ci'][1]:.3f}]"
        for s, v in table.items()
    )


def weak_verdict(table: Mapping) -> str:
    """From the paired difference, weak minus zero-shot Dice on the same test images
    (:func:`.reference.paired_gain`): ``"better"`` when its 95 % interval lies above 0, ``"worse"``
    when it lies below 0, ``"unclear"`` when it includes 0 (these images cannot tell the two
    apart). Needs each row's ``dice_per_image``; the two separate intervals are not used."""
    diff = reference.paired_gain(table)
    if diff["ci_low"] > 0:
        return "better"
    if diff["ci_high"] < 0:
        return "worse"
    return "unclear"


def summarize_table(table: Mapping) -> str:
    """One sentence read off the table: the best setting, weak minus zero-shot Dice, and what the
    paired difference on the same test images says: a clear gain, a clear loss, or not
    distinguishable from noise (see :func:`weak_verdict`)."""
    best = max(table, key=lambda s: float(table[s]["dice"]))
    zs, weak = table[reference.ZERO_SHOT], table[reference.WEAK]
    gain = float(weak["dice"]) - float(zs["dice"])
    d = reference.paired_gain(table)
    numbers = (
        f"weakly supervised {float(weak['dice']):.3f} "
        f"[{float(weak['ci'][0]):.3f}, {float(weak['ci'][1]):.3f}] against zero-shot "
        f"{float(zs['dice']):.3f} [{float(zs['ci'][0]):.3f}, {float(zs['ci'][1]):.3f}] "
        f"({gain:+.3f} Dice); on the same {d['n']} test images the paired difference, weak minus "
        f"zero-shot, is {d['mean']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] "
        f"({d['wins']} better, {d['losses']} worse)"
    )
    verdict = weak_verdict(table)
    apart = float(weak["ci"][0]) > float(zs["ci"][1]) or float(weak["ci"][1]) < float(zs["ci"][0])
    aside = (
        "" if apart else " (the two separate intervals overlap, but they also carry how much the "
        "images differ from each other, which the paired difference cancels)"
    )
    if verdict == "better":
        said = (
            "the interval lies above 0, so weak supervision helped on images like these: a clear "
            f"gain{aside}"
        )
    elif verdict == "worse":
        said = (
            "the interval lies below 0, so weak supervision hurt on images like these: a clear "
            f"loss{aside}"
        )
    else:
        said = (
            "the interval includes 0, so these images cannot tell the two apart: the difference "
            "may be noise"
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
