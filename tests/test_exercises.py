"""The course exercises: the autograder accepts right answers, rejects the usual wrong ones with a
message naming the mistake, its references are the package's own computations, the committed
student notebooks are the blanked solutions, and a folder of submissions can be graded."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from medclipsam import exercises as ex
from medclipsam import losses
from medclipsam.exercises import reference as R

ROOT = Path(__file__).resolve().parents[1]
STUDENTS = ROOT / "notebooks" / "exercises"
SOLUTIONS = STUDENTS / "solutions"
NAMES = ["ex01_dhn_nce", "ex02_gscorecam", "ex03_boxes", "ex04_weak"]

pytestmark = pytest.mark.usefixtures("one_thread")

# check -> (its reference, the name of the student's function in the notebooks)
CHECKS = {
    "check_hard_negative_weights": (R.hard_negative_weights, "hard_negative_weights"),
    "check_dhn_nce": (R.dhn_nce, "dhn_nce"),
    "check_channel_selection": (R.select_channels, "select_channels"),
    "check_channel_masks": (R.channel_masks, "channel_masks"),
    "check_gscorecam_weights": (R.gscorecam_weights, "gscorecam_weights"),
    "check_combine_maps": (R.combine_maps, "combine_maps"),
    "check_saliency_to_mask": (R.saliency_to_mask, "saliency_to_mask"),
    "check_boxes": (R.mask_to_boxes, "mask_to_boxes"),
    "check_mean_dice": (R.mean_dice, "mean_dice"),
    "check_interpretation": (R.interpret, "interpret"),
}


def _load_script():
    spec = importlib.util.spec_from_file_location(
        "build_notebooks", ROOT / "scripts" / "build_notebooks.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def solutions() -> dict:
    """The functions written in the solution notebooks' solution cells."""
    ns: dict = {"math": math, "np": np, "ndi": ndi, "torch": torch, "F": F}
    for name in NAMES:
        nb = nbformat.read(SOLUTIONS / f"{name}.ipynb", as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code" and "solution" in cell.metadata.get("tags", []):
                exec(compile(cell.source, f"{name}.ipynb", "exec"), ns)
    return ns


def _report(check, fn, **kw) -> str:
    res = getattr(ex, check)(fn, verbose=False, **kw)
    assert not res.passed, f"{check} accepted a wrong answer"
    assert res.messages[0].startswith(f"[FAIL] {check}")
    return res.report()


# --------------------------------------------------------------------------------------------
# right answers pass


@pytest.mark.parametrize("check", list(CHECKS))
def test_each_check_accepts_the_reference_and_the_notebook_solution(check, solutions, capsys):
    ref, name = CHECKS[check]
    res = getattr(ex, check)(ref, seed=3)
    assert res.passed and res.n_failed == 0 and res.n_cases >= 8, res.report()
    assert capsys.readouterr().out.startswith(f"[PASS] {check}: all {res.n_cases} cases agree")
    res = getattr(ex, check)(solutions[name], verbose=False, seed=5)
    assert res.passed, res.report()


def test_the_checks_each_notebook_calls_are_the_ones_listed(solutions):
    from medclipsam.exercises.grading import called_checks, identify_exercise

    for name in NAMES:
        for folder in (SOLUTIONS, STUDENTS):
            nb = nbformat.read(folder / f"{name}.ipynb", as_version=4)
            assert tuple(called_checks(nb)) == ex.EXERCISES[name]
            # by file name, by the checks it calls when renamed, and as the teacher says
            assert identify_exercise(nb, folder / f"{name}.ipynb") == name
            assert identify_exercise(nb, "alice.ipynb") == name
            assert identify_exercise(nb, "alice.ipynb", "ex01_dhn_nce") == "ex01_dhn_nce"
    assert identify_exercise(nbformat.v4.new_notebook(), "alice_ex03.ipynb") == "ex03_boxes"
    assert identify_exercise(nbformat.v4.new_notebook(), "alice.ipynb") is None
    with pytest.raises(ValueError, match="unknown exercise"):
        identify_exercise(nbformat.v4.new_notebook(), "alice.ipynb", "ex09")


def test_only_results_signed_with_the_session_key_are_read(tmp_path):
    from medclipsam.exercises._record import sign
    from medclipsam.exercises.grading import read_results

    key, body = b"k" * 32, json.dumps({"check": "check_boxes", "passed": True})
    fake = json.dumps({"check": "check_dhn_nce", "passed": True})
    lines = [
        json.dumps({"record": body, "mac": sign(key, body)}),
        json.dumps({"record": fake, "mac": sign(b"guessed", fake)}),
        "[PASS] check_saliency_to_mask: all 12 cases agree with the reference.",
    ]
    (tmp_path / "results.jsonl").write_text("\n".join(lines) + "\n")
    results, forged = read_results(tmp_path / "results.jsonl", key)
    assert list(results) == ["check_boxes"] and results["check_boxes"]["passed"]
    assert forged == 2


# --------------------------------------------------------------------------------------------
# wrong answers are rejected, the mistake named


def _sim(img, txt, tau):
    return F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).T / tau


def _dhn(
    img, txt, tau=0.6, beta1=0.15, beta2=0.15, *, alpha=0.0, weights="row", sign=1.0, detach=False
):
    """DHN-NCE written out, with the knobs of the usual mistakes."""
    s = _sim(img, txt, tau)

    def one(m, beta):
        b = m.shape[0]
        eye = torch.eye(b, dtype=torch.bool)
        if weights == "none":
            logw = torch.zeros_like(m)
        else:
            logw = math.log(b - 1) + torch.log_softmax(
                (sign * beta * m).masked_fill(eye, -math.inf), dim=0 if weights == "col" else 1
            )
        if detach:
            logw = logw.detach()
        terms = (logw + m).masked_fill(eye, -math.inf)
        if alpha:
            terms = torch.cat([terms, m.diagonal()[:, None]], dim=1)
        return (torch.logsumexp(terms, dim=1) - m.diagonal()).mean()

    return one(s, beta1) + one(s.T, beta2)


@pytest.mark.parametrize(
    "wrong, named",
    [
        (
            lambda i, t, tau=0.6, beta1=0.15, beta2=0.15: _dhn(i, t, tau, beta1, beta2, alpha=1.0),
            "KEPT in the denominator",
        ),
        (
            lambda i, t, tau=0.6, beta1=0.15, beta2=0.15: (
                F.cross_entropy(_sim(i, t, tau), torch.arange(len(i)))
                + F.cross_entropy(_sim(i, t, tau).T, torch.arange(len(i)))
            ),
            "plain InfoNCE",
        ),
        (
            lambda i, t, tau=0.6, beta1=0.15, beta2=0.15: _dhn(
                i, t, tau, beta1, beta2, weights="none"
            ),
            "DCL",
        ),
        (
            lambda i, t, tau=0.6, beta1=0.15, beta2=0.15: _dhn(i, t, tau, beta1, beta2, sign=-1.0),
            "sign of beta flipped",
        ),
        (lambda i, t, tau=0.6, beta1=0.15, beta2=0.15: _dhn(i, t, tau, beta2, beta1), "swapped"),
        (
            lambda i, t, tau=0.6, beta1=0.15, beta2=0.15: _dhn(
                i, t, tau, beta1, beta2, weights="col"
            ),
            "wrong axis",
        ),
        (
            lambda i, t, tau=0.6, beta1=0.15, beta2=0.15: _dhn(
                i, t, tau, beta1, beta2, detach=True
            ),
            "do not .detach() them",
        ),
    ],
)
def test_dhn_nce_check_names_the_mistake(wrong, named):
    report = _report("check_dhn_nce", wrong)
    assert named in report, report


def test_dhn_nce_check_catches_overflow_of_a_loss_written_with_exp():
    def naive(img, txt, tau=0.6, beta1=0.15, beta2=0.15):
        s = _sim(img, txt, tau)
        eye = torch.eye(len(s), dtype=torch.bool)

        def one(m, beta):
            e = torch.exp(beta * m).masked_fill(eye, 0)
            w = (len(m) - 1) * e / e.sum(1, keepdim=True)
            return (torch.log((w * torch.exp(m)).sum(1)) - m.diagonal()).mean()

        return one(s, beta1) + one(s.T, beta2)

    res = ex.check_dhn_nce(naive, verbose=False)
    assert res.n_failed == 1, res.report()  # right everywhere but at similarities near 100
    assert "NaN/inf" in res.report() and "logsumexp" in res.report()


@pytest.mark.parametrize(
    "wrong, named",
    [
        (
            lambda s, beta: torch.softmax(
                (beta * s).masked_fill(torch.eye(len(s), dtype=torch.bool), -math.inf), 1
            ),
            "factor (B - 1)",
        ),
        (
            lambda s, beta: (len(s) - 1) * torch.softmax(beta * s, 1),
            "diagonal (the positive) must be 0",
        ),
    ],
)
def test_hard_negative_weights_check_names_the_mistake(wrong, named):
    assert named in _report("check_hard_negative_weights", wrong)


def test_channel_selection_by_absolute_gradient_is_named():
    def by_abs(grads, k):
        return grads.mean(dim=(2, 3)).abs().topk(min(k, grads.shape[1]), dim=1).indices

    report = _report("check_channel_selection", by_abs)
    assert "ABSOLUTE mean gradient" in report and "expected channels" in report


def test_channel_selection_accepts_any_order_among_ties_and_explains_k_above_c():
    def ties_reversed(grads, k):
        imp = grads.mean(dim=(2, 3))
        kk = min(k, grads.shape[1])
        # stable sort of the reversed channels: tied channels come out in the other order
        order = torch.argsort(imp.flip(1), dim=1, descending=True, stable=True)[:, :kk]
        return grads.shape[1] - 1 - order

    assert ex.check_channel_selection(ties_reversed, verbose=False).passed
    report = _report(
        "check_channel_selection", lambda grads, k: grads.mean(dim=(2, 3)).topk(k, dim=1).indices
    )
    assert "RuntimeError" in report and "keep all C channels" in report


def _masks(act, channels, size, *, normalise=True, align_corners=False):
    _, _, h, w = act.shape
    kept = act.gather(1, channels[:, :, None, None].expand(-1, -1, h, w))
    up = F.interpolate(kept, size=size, mode="bilinear", align_corners=align_corners)
    if not normalise:
        return up
    lo, hi = up.amin((2, 3), keepdim=True), up.amax((2, 3), keepdim=True)
    return (up - lo) / (hi - lo)  # NaN for a constant channel


@pytest.mark.parametrize(
    "wrong, named",
    [
        (lambda a, c, s: _masks(a, c, s, normalise=False), "masks are not normalised"),
        (lambda a, c, s: _masks(a, c, s), "constant channel"),
        (
            lambda a, c, s: torch.nan_to_num(_masks(a, c, s, align_corners=True)),
            "align_corners=True",
        ),
    ],
)
def test_channel_masks_check_names_the_mistake(wrong, named):
    assert named in _report("check_channel_masks", wrong)


@pytest.mark.parametrize(
    "wrong, named",
    [
        (lambda cos, scale: scale * cos, "no softmax"),
        (lambda cos, scale: torch.softmax(cos, -1), "wrong temperature"),
        (lambda cos, scale: torch.softmax(cos / scale, -1), "wrong temperature"),
    ],
)
def test_gscorecam_weights_check_names_the_mistake(wrong, named):
    assert named in _report("check_gscorecam_weights", wrong)


def test_combine_check_names_a_missing_relu():
    def no_relu(act, channels, weights, size):
        _, _, h, w = act.shape
        kept = act.gather(1, channels[:, :, None, None].expand(-1, -1, h, w))
        cam = (weights[:, :, None, None] * kept).sum(1)
        up = F.interpolate(cam[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
        lo, hi = up.amin((1, 2), keepdim=True), up.amax((1, 2), keepdim=True)
        return (up - lo) / (hi - lo)

    assert "no ReLU" in _report("check_combine_maps", no_relu)


def _boxes(mask, n_components=1, *, structure=None, swap=False, exclusive=False, merge=False):
    lab, n = ndi.label(mask, structure=np.ones((3, 3)) if structure is None else structure)
    if n == 0:
        return np.zeros((0, 4))
    sizes = np.bincount(lab.ravel())[1:]
    keep = np.argsort(-sizes, kind="stable")[: n if n_components is None else n_components] + 1
    regions = [np.isin(lab, keep)] if merge else [lab == k for k in keep]
    out = []
    for r in regions:
        rows, cols = np.nonzero(r)
        box = [cols.min(), rows.min(), cols.max() + exclusive, rows.max() + exclusive]
        out.append(box[1::-1] + box[:1:-1] if swap else box)
    return np.array(sorted(out, key=lambda b: (b[1], b[0]) if swap else (b[0], b[1])), float)


@pytest.mark.parametrize(
    "wrong, named",
    [
        (lambda m, n_components=1: _boxes(m, n_components, swap=True), "x and y are swapped"),
        (lambda m, n_components=1: _boxes(m, n_components, exclusive=True), "INCLUSIVE"),
        (lambda m, n_components=1: _boxes(m, n_components, merge=True), "merged into one box"),
        (
            lambda m, n_components=1: _boxes(
                m, n_components, structure=ndi.generate_binary_structure(2, 1)
            ),
            "4-connectivity",
        ),
    ],
)
def test_boxes_check_names_the_mistake(wrong, named):
    assert named in _report("check_boxes", wrong)


def test_boxes_check_shows_the_two_box_case_and_the_empty_mask():
    report = _report("check_boxes", lambda m, n_components=1: _boxes(m, n_components, merge=True))
    assert "two blobs, two boxes" in report and "expected 2 box(es), got 1" in report
    empty = _report("check_boxes", lambda m, n_components=1: np.array([]))
    assert "an empty mask" in empty and "np.zeros((0, 4))" in empty


def test_saliency_to_mask_check_names_a_fixed_threshold():
    report = _report("check_saliency_to_mask", lambda s: np.asarray(s) > 0.5)
    assert "fixed threshold" in report or "first step" in report


@pytest.mark.parametrize(
    "wrong, named",
    [
        (
            lambda p, g: float(
                np.mean(
                    [
                        2 * (a & b).sum() / (a.sum() + b.sum()) if a.any() or b.any() else 0.0
                        for a, b in zip(p, g)
                    ]
                )
            ),
            "counted as Dice 0",
        ),
        (
            lambda p, g: float(
                2
                * sum((a & b).sum() for a, b in zip(p, g))
                / max(1, sum(a.sum() + b.sum() for a, b in zip(p, g)))
            ),
            "pooled",
        ),
    ],
)
def test_mean_dice_check_names_the_mistake(wrong, named):
    assert named in _report("check_mean_dice", wrong)


# One hint per failing case, and never one for a mistake the code did not make: each wrong
# mean_dice below makes exactly the named mistakes, and the check gives exactly those hints.
def _pooled(empty):
    def fn(preds, gts):
        inter = sum(int((p & g).sum()) for p, g in zip(preds, gts))
        total = sum(int(p.sum() + g.sum()) for p, g in zip(preds, gts))
        if total == 0:
            return empty
        return 2 * inter / total

    return fn


def _per_image(both_empty, *, iou=False, drop_empty=False):
    def fn(preds, gts):
        scores = []
        for p, g in zip(preds, gts):
            inter, size = int((p & g).sum()), int(p.sum() + g.sum())
            if size == 0:
                if not drop_empty:
                    scores.append(both_empty)
                continue
            scores.append(inter / (size - inter) if iou else 2 * inter / size)
        return float(np.mean(scores)) if scores else float("nan")

    return fn


@pytest.mark.parametrize(
    "wrong, keys",
    [
        (_pooled(0.0), ["pooled"]),  # pooled Dice, 0 for 0/0: one hint (used to be three)
        (_pooled(1.0), ["pooled"]),
        (_pooled(float("nan")), ["nan_for_empty", "pooled"]),  # two mistakes, two cases
        (_per_image(0.0), ["empty_as_zero"]),
        (_per_image(1.0, drop_empty=True), ["nan_for_empty", "empty_left_out"]),  # mean([])
        (_per_image(float("nan")), ["nan_for_empty"]),
        (_per_image(1.0, iou=True), ["iou"]),
    ],
    ids=["pooled-0", "pooled-1", "pooled-nan", "empty-0", "empty-dropped", "empty-nan", "iou"],
)
def test_mean_dice_hints_are_exactly_the_mistakes_made(wrong, keys):
    from medclipsam.exercises.evaluation import DICE_HINTS

    res = ex.check_mean_dice(wrong, verbose=False)
    assert not res.passed
    assert res.hints == [DICE_HINTS[k] for k in keys], res.report()
    assert res.report().count("Hint") == len(keys)


def test_a_mistake_the_other_cases_speak_against_is_not_named():
    from medclipsam.exercises._core import Case, run_check

    cases = [Case("a", (1.0,)), Case("b", (2.0,)), Case("c", (3.0,))]

    def mistakes(case):
        (x,) = case.args
        return [("doubled", 2 * x), ("plus two", x + 2)]  # both give 4 on "b"

    def check(fn):
        return run_check(
            "check_toy",
            fn,
            cases,
            run=lambda f, c, a, k: f(*a, **k),
            reference=lambda x: x,
            compare=lambda e, g, c: None if g == e else f"expected {e}, got {g}",
            mistakes=mistakes,
            verbose=False,
        )

    # right on "a" and "c", wrong on "b": plus-two would change "a", doubling would too
    assert check(lambda x: 4.0 if x == 2.0 else x).hints == []
    assert check(lambda x: x + 2).hints == ["plus two"]  # doubled is ruled out by "a" and "c"
    assert check(lambda x: 2 * x).hints == ["doubled"]
    # where both fit every case, the first listed (the more specific) is the one hint
    only_b = [cases[1]]
    res = run_check(
        "check_toy",
        lambda x: 2 * x,
        only_b,
        run=lambda f, c, a, k: f(*a, **k),
        reference=lambda x: x,
        compare=lambda e, g, c: None if g == e else "differs",
        mistakes=mistakes,
        verbose=False,
    )
    assert res.hints == ["doubled"]


def test_interpretation_typed_in_instead_of_computed_is_caught():
    def typed_in(table):
        return {
            "best_method": "fully supervised",
            "weak_helped": True,
            "weak_gain": 0.05,
            "clear_gain": False,
        }

    report = _report("check_interpretation", typed_in)
    assert "never change" in report and "compute the answers" in report


def test_interpretation_clear_gain_from_the_means_is_named():
    def by_means(table):
        ans = R.interpret(table)
        ans["clear_gain"] = ans["weak_helped"]
        return ans

    assert "PAIRED difference" in _report("check_interpretation", by_means)


def _paired(table):
    from medclipsam.metrics import paired_difference

    return paired_difference(table[R.WEAK]["dice_per_image"], table[R.ZERO_SHOT]["dice_per_image"])


def _interpret_with(**wrong):
    def fn(table):
        ans = R.interpret(table)
        zs, weak = table[R.ZERO_SHOT], table[R.WEAK]
        d = _paired(table)
        if "gain_sign" in wrong:
            ans["weak_gain"] = -ans["weak_gain"]
        if "clear_by_means" in wrong:
            ans["clear_gain"] = ans["weak_helped"]
        if "clear_by_overlap" in wrong:
            ans["clear_gain"] = weak["ci"][0] > zs["ci"][1]
        if "clear_either_way" in wrong:
            ans["clear_gain"] = d["ci_low"] > 0 or d["ci_high"] < 0
        if "clear_reversed" in wrong:
            ans["clear_gain"] = d["ci_high"] < 0
        if "best_is_min" in wrong:
            ans["best_method"] = min(table, key=lambda s: table[s]["dice"])
        return ans

    return fn


@pytest.mark.parametrize(
    "key",
    ["gain_sign", "clear_by_means", "clear_by_overlap", "clear_either_way", "clear_reversed",
     "best_is_min"],
)
def test_interpretation_names_each_mistake_alone(key):
    from medclipsam.exercises.evaluation import ANSWER_HINTS

    res = ex.check_interpretation(_interpret_with(**{key: True}), verbose=False)
    assert not res.passed and res.hints == [ANSWER_HINTS[key]], res.report()


def test_interpretation_with_two_mistakes_gets_one_hint_per_case_the_first_listed():
    from medclipsam.exercises.evaluation import ANSWER_HINTS

    res = ex.check_interpretation(_interpret_with(gain_sign=True, best_is_min=True), verbose=False)
    assert res.hints == [ANSWER_HINTS["gain_sign"]], res.report()
    assert res.report().count("Hint") == 1


def _per_image_table(zs, weak, full=None):
    """A table as table_from_reproduce makes it: each row's per-image Dice, their mean and their
    own 95 % bootstrap interval."""
    from medclipsam.metrics import summarize

    def row(values):
        st = summarize([{"dice": float(v)} for v in values], ["dice"], n_boot=1000)["dice"]
        return {"dice": float(np.mean(values)), "ci": (st["ci_low"], st["ci_high"]),
                "dice_per_image": [float(v) for v in values]}

    zs = np.asarray(zs, float)
    full = zs + 0.2 if full is None else np.asarray(full, float)
    return {R.ZERO_SHOT: row(zs), R.WEAK: row(weak), R.FULL: row(np.clip(full, 0, 1))}


def _same_images_gain(gain=0.03, n=20, spread=0.01):
    """Images that differ a lot from each other; weak supervision adds about ``gain`` to each."""
    zs = np.linspace(0.3, 0.75, n)
    wiggle = np.resize([spread, -spread], n)
    return _per_image_table(zs, zs + gain + wiggle)


def test_interpretation_rejects_the_overlap_rule_where_the_paired_interval_is_above_0():
    from medclipsam.exercises.evaluation import ANSWER_HINTS

    table = _same_images_gain()
    zs, weak, d = table[R.ZERO_SHOT], table[R.WEAK], _paired(table)
    assert weak["ci"][0] <= zs["ci"][1]  # the two separate intervals overlap widely ...
    assert d["ci_low"] > 0 and d["wins"] == 20  # ... yet weak wins on every image
    assert R.interpret(table)["clear_gain"] is True

    def overlap_rule(t):
        ans = R.interpret(t)
        ans["clear_gain"] = bool(t[R.WEAK]["ci"][0] > t[R.ZERO_SHOT]["ci"][1])
        return ans

    res = ex.check_interpretation(overlap_rule, table, n_trials=0, verbose=False)
    assert not res.passed and res.hints == [ANSWER_HINTS["clear_by_overlap"]], res.report()
    assert "First failing input: your table" in res.report()
    assert "clear_gain: expected True, got False" in res.report()
    assert ex.check_interpretation(R.interpret, table, n_trials=0, verbose=False).passed

    # the right answer written by hand: the mean of the per-image differences and a bootstrap of
    # the images, each image's pair kept together (another seed gives the same verdict)
    def by_hand(t):
        w = np.asarray(t[R.WEAK]["dice_per_image"])
        z = np.asarray(t[R.ZERO_SHOT]["dice_per_image"])
        d = w - z
        r = np.random.default_rng(123)
        boots = [d[r.integers(0, d.size, d.size)].mean() for _ in range(1000)]
        best = max(t, key=lambda s: t[s]["dice"])
        gain = t[R.WEAK]["dice"] - t[R.ZERO_SHOT]["dice"]
        return {"best_method": best, "weak_helped": bool(gain > 0), "weak_gain": gain,
                "clear_gain": bool(np.quantile(boots, 0.025) > 0)}

    res = ex.check_interpretation(by_hand, table, verbose=False)
    assert res.passed, res.report()


def test_interpretation_needs_the_per_image_dice():
    table = {k: {"dice": v["dice"], "ci": v["ci"]} for k, v in _same_images_gain().items()}
    with pytest.raises(ValueError, match="dice_per_image"):
        ex.check_interpretation(R.interpret, table, verbose=False)


def test_table_from_reproduce_keeps_the_per_image_dice():
    rows = [
        {"setting": R.ZERO_SHOT, "dice": 0.5, "dice_ci": "0.400-0.600",
         "dice_per_image": [0.4, 0.50004, 0.6]},
        {"setting": R.WEAK, "dice": "0.6", "dice_ci": "0.500-0.700"},  # as read from table.csv
    ]
    table = ex.table_from_reproduce(rows)
    assert table[R.ZERO_SHOT]["dice_per_image"] == [0.4, 0.50004, 0.6]
    assert table[R.ZERO_SHOT]["dice"] == pytest.approx(np.mean([0.4, 0.50004, 0.6]), abs=1e-15)
    assert table[R.WEAK] == {"dice": 0.6, "ci": (0.5, 0.7)}


@pytest.mark.parametrize(
    "gain, spread, verdict, said",
    [
        (0.03, 0.01, "better", "a clear gain (the two separate intervals overlap"),
        (-0.03, 0.01, "worse", "a clear loss (the two separate intervals overlap"),
        (0.01, 0.08, "unclear", "the interval includes 0, so these images cannot tell"),
        (-0.01, 0.08, "unclear", "the interval includes 0, so these images cannot tell"),
    ],
    ids=["clearly-better", "clearly-worse", "unclear-higher", "unclear-lower"],
)
def test_ex04_summary_is_read_off_the_paired_difference(gain, spread, verdict, said):
    table = _same_images_gain(gain, spread=spread)
    zs, weak = table[R.ZERO_SHOT], table[R.WEAK]
    assert weak["ci"][0] <= zs["ci"][1] and zs["ci"][0] <= weak["ci"][1]  # overlap in every case
    assert ex.weak_verdict(table) == verdict
    text = ex.summarize_table(table)
    assert said in text and text.startswith("Best: fully supervised")
    d = _paired(table)
    assert f"({weak['dice'] - zs['dice']:+.3f} Dice)" in text
    assert f"paired difference, weak minus zero-shot, is {d['mean']:+.3f}" in text
    assert f"({d['wins']} better, {d['losses']} worse)" in text
    if verdict == "worse":
        assert "helped" not in text


def test_ex04_verdict_ignores_separate_intervals_that_are_apart():
    # images much alike: the separate intervals are apart, and the paired interval agrees
    zs = np.linspace(0.50, 0.52, 20)
    table = _per_image_table(zs, zs + 0.2 + np.resize([0.01, -0.01], 20))
    assert table[R.WEAK]["ci"][0] > table[R.ZERO_SHOT]["ci"][1]
    assert ex.weak_verdict(table) == "better"
    text = ex.summarize_table(table)
    assert "a clear gain." in text and "overlap" not in text


def test_ex04_table_comparison_explains_a_mismatch(capsys):
    gts = [np.ones((4, 4), bool), np.zeros((4, 4), bool)]
    preds = {R.ZERO_SHOT: [np.ones((4, 4), bool), np.zeros((4, 4), bool)]}
    table = {R.ZERO_SHOT: {"dice": 1.0, "ci": (1.0, 1.0)}}
    ex.compare_with_table(R.mean_dice, preds, gts, table)  # agrees: no error
    with pytest.raises(AssertionError) as info:
        ex.compare_with_table(_per_image(0.0), preds, gts, table)
    msg = str(info.value)
    assert "zero-shot: your mean_dice gives 0.5000, the table says 1.0000" in msg
    assert "expected the same number" in msg and "Check:" in msg and "OUT_DIR" in msg
    assert "<- differs" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------
# feedback on errors, strict mode, inputs left alone


def test_a_function_that_raises_gets_the_exception_as_feedback():
    def broken(img, txt, tau=0.6, beta1=0.15, beta2=0.15):
        raise ValueError("shapes do not match")

    res = ex.check_dhn_nce(broken, verbose=False)
    assert not res.passed and res.n_failed == res.n_cases
    assert "your function raised ValueError: shapes do not match" in res.report()
    assert "raise ValueError" in res.report()  # the line of the student's code

    def blank(grads, k):
        raise NotImplementedError()

    assert "Not written yet" in _report("check_channel_selection", blank)


def test_strict_raises_an_assertion_error_carrying_the_feedback(capsys):
    with pytest.raises(AssertionError, match=r"\[FAIL\] check_gscorecam_weights") as info:
        ex.check_gscorecam_weights(lambda cos, scale: torch.softmax(cos, -1), strict=True)
    assert "wrong temperature" in str(info.value) and "First failing input" in str(info.value)
    assert capsys.readouterr().out == ""  # the feedback is in the error, not printed twice


def test_changing_an_input_in_place_is_reported():
    def in_place(cos, scale):
        cos.mul_(scale)
        return torch.softmax(cos, -1)

    assert "changed its input in place" in _report("check_gscorecam_weights", in_place)


def test_wrong_shapes_and_types_are_described():
    assert "0-d tensor" in _report("check_dhn_nce", lambda i, t, **kw: R.dhn_nce(i, t, **kw)[None])
    assert "return a torch tensor" in _report(
        "check_dhn_nce", lambda i, t, **kw: R.dhn_nce(i, t, **kw).detach().item()
    )
    assert "wrong shape" in _report(
        "check_combine_maps", lambda a, c, w, s: R.combine_maps(a, c, w, s)[:, None]
    )


# --------------------------------------------------------------------------------------------
# the references are the package's computations


def test_the_loss_family_of_the_hints_is_the_package_loss():
    from medclipsam.exercises.dhn_nce import loss_family

    img, txt = torch.randn(7, 5, dtype=torch.float64), torch.randn(7, 5, dtype=torch.float64)
    kw = dict(tau=0.3, beta1=0.4, beta2=1.1)
    assert torch.allclose(loss_family(img, txt, **kw), losses.dhn_nce(img, txt, **kw))
    assert torch.allclose(
        loss_family(img, txt, 0.3, 0.4, 1.1, alpha=1.0), losses.hn_nce(img, txt, alpha=1.0, **kw)
    )
    assert torch.allclose(
        loss_family(img, txt, 0.3, 0.0, 0.0, weights="none"), losses.dcl(img, txt, tau=0.3)
    )


@pytest.fixture(scope="module")
def toy():
    from medclipsam.data.phantom import PROMPTS, TASKS, PhantomDataset
    from medclipsam.models import load_clip

    clip = load_clip("toy")
    xs, ts = [], []
    for task in TASKS[:2]:
        s = PhantomDataset(task, 1, seed=2, size=96, split="test", normal_fraction=0.0)[0]
        xs.append(clip.prepare(s.rgb)[0])
        with torch.no_grad():
            ts.append(clip.model.encode_text(clip.tokenize([PROMPTS[task]])).float()[0])
    return clip, torch.stack(xs), torch.stack(ts)


@pytest.mark.parametrize("k", [8, 30])
def test_the_reference_steps_chained_give_the_package_gscorecam(toy, k):
    from medclipsam.saliency.gscorecam import gscorecam_details

    clip, x, txt = toy
    d = gscorecam_details(clip.model, x, txt, k=k)
    maps = ex.gscorecam_with(clip.model, x, txt, k=k)
    assert torch.allclose(maps, d.maps, atol=1e-6)
    act, grads, scale = ex.layer_activations(clip.model, x, txt)
    assert torch.equal(R.select_channels(grads, k), d.channels)
    assert scale == pytest.approx(float(clip.model.logit_scale.detach().exp()))


def test_the_map_check_on_the_toy_clip_passes_the_solutions_and_fails_an_abs_sort(toy, solutions):
    clip = toy[0]
    steps = [
        solutions[n]
        for n in ("select_channels", "channel_masks", "gscorecam_weights", "combine_maps")
    ]
    assert ex.check_gscorecam_map(*steps, k=8, n_images=1, clip=clip, verbose=False).passed

    def by_abs(grads, k):
        return grads.mean(dim=(2, 3)).abs().topk(min(k, grads.shape[1]), dim=1).indices

    res = ex.check_gscorecam_map(by_abs, k=8, n_images=1, clip=clip, verbose=False)
    assert not res.passed and "peaks at" in res.report()


# --------------------------------------------------------------------------------------------
# student notebooks


@pytest.mark.parametrize("name", NAMES)
def test_student_notebooks_are_blank_where_the_solutions_are(name):
    student = nbformat.read(STUDENTS / f"{name}.ipynb", as_version=4)
    solution = nbformat.read(SOLUTIONS / f"{name}.ipynb", as_version=4)
    text = "\n".join(c.source for c in student.cells)
    assert "### BEGIN SOLUTION" not in text and "### END SOLUTION" not in text
    assert "# YOUR CODE HERE" in text and "raise NotImplementedError()" in text
    assert [c.id for c in student.cells] == [c.id for c in solution.cells]
    for s, t in zip(student.cells, solution.cells):
        if "solution" in t.metadata.get("tags", []):
            assert s.source != t.source
            stub = (
                "YOUR ANSWER HERE" if t.cell_type == "markdown" else "raise NotImplementedError()"
            )
            assert stub in s.source
        else:
            assert s.source == t.source.replace(
                "notebooks/exercises/solutions/", "notebooks/exercises/"
            )


def test_the_generator_keeps_indentation_and_refuses_unbalanced_markers():
    mod = _load_script()
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell(
        "def f(x):\n    ### BEGIN SOLUTION\n    return x\n    ### END SOLUTION"
    )
    cell.metadata["tags"] = ["solution"]
    nb.cells = [cell]
    out = mod.student_notebook(nb)
    assert out.cells[0].source == "def f(x):\n    # YOUR CODE HERE\n    raise NotImplementedError()"
    cell.source = "def f(x):\n    ### BEGIN SOLUTION\n    return x"
    with pytest.raises(mod.SolutionMarkupError, match="without a matching"):
        mod.student_notebook(nb, "broken.ipynb")
    cell.metadata["tags"] = []
    cell.source = "x = 1  ### END SOLUTION"
    with pytest.raises(mod.SolutionMarkupError, match="not tagged 'solution'"):
        mod.student_notebook(nb, "untagged.ipynb")


@pytest.mark.notebook
def test_a_student_notebook_stops_at_its_first_exercise(tmp_path):
    import papermill

    path = STUDENTS / "ex01_dhn_nce.ipynb"
    out = tmp_path / "out.ipynb"
    with pytest.raises(papermill.PapermillExecutionError) as info:
        papermill.execute_notebook(
            str(path),
            str(out),
            parameters={"SMOKE": True},
            cwd=str(tmp_path),
            kernel_name="python3",
            progress_bar=False,
        )
    assert info.value.ename == "AssertionError"
    assert "NotImplementedError" in info.value.evalue and "Not written yet" in info.value.evalue
    code = [c for c in nbformat.read(out, as_version=4).cells if c.cell_type == "code"]
    tags = [c.metadata.get("tags", []) for c in code]
    first_solution = next(i for i, t in enumerate(tags) if "solution" in t)
    failed = next(i for i, c in enumerate(code) if any(o.output_type == "error" for o in c.outputs))
    assert failed == first_solution + 1 and "check" in tags[failed]  # its check, right below it
    assert all(not c.outputs for c in code[:failed])  # everything before ran cleanly
    assert all(c.execution_count is None for c in code[failed + 1 :])


# --------------------------------------------------------------------------------------------
# grading a folder of submissions


@pytest.mark.notebook
def test_grading_a_folder_of_submissions(tmp_path, capsys):
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

    nb = new_notebook()
    params = new_code_cell('WORLD = "offline"\nSMOKE = False')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [
        new_markdown_cell("# A submission"),
        params,
        new_code_cell("import numpy as np\nfrom medclipsam import exercises as ex\nassert SMOKE"),
        new_code_cell(
            "def mean_dice(pred, gt):\n    return ex.reference.mean_dice(pred, gt)\n"
            "ex.check_mean_dice(mean_dice, n_trials=1, strict=True)"
        ),
        new_code_cell(
            "ex.check_boxes(lambda m, n_components=1: np.zeros((0, 4)), n_trials=1, strict=True)"
        ),
        new_code_cell(
            "not_defined_yet\nex.check_interpretation(ex.reference.interpret, n_trials=1)"
        ),
    ]
    subs = tmp_path / "submissions"
    subs.mkdir()
    nbformat.write(nb, subs / "alice.ipynb")
    (subs / "bob.ipynb").write_text("this is not a notebook")
    from medclipsam.exercises.__main__ import main

    assert main(["grade", str(subs), "--out", str(tmp_path / "grades") + "/", "--smoke"]) == 1
    printed = capsys.readouterr().out
    assert f"wrote {tmp_path / 'grades' / 'grades.csv'} " in printed and "//" not in printed
    import csv

    with open(tmp_path / "grades" / "grades.csv", newline="") as fh:
        rows = {r["notebook"]: r for r in csv.DictReader(fh)}
    alice = rows["alice.ipynb"]
    # scored against exercise 4's two checks (most of the checks it calls are exercise 4's);
    # check_boxes belongs to exercise 3: it ran, but is not counted
    assert alice["exercise"] == "ex04_weak"
    assert (alice["passed"], alice["failed"], alice["not_run"]) == ("1", "0", "1")
    assert float(alice["score"]) == pytest.approx(0.5)
    assert alice["checks"] == "check_mean_dice:pass check_interpretation:not_run"
    assert "not run: check_interpretation" in alice["notes"]
    assert "another exercise ran (not counted): check_boxes" in alice["notes"]
    assert "NameError" in alice["errors"] and "AssertionError" in alice["errors"]
    # the whole feedback of the failed check, over several lines, survives the CSV round trip
    assert "[FAIL] check_boxes" in alice["errors"] and "First failing input" in alice["errors"]
    assert "\n  Hint: " in alice["errors"] or "\n  Also failing" in alice["errors"]
    assert "not a readable notebook" in rows["bob.ipynb"]["errors"]
    assert "feedback for learning, not an exam" in printed
    assert "cannot detect" in (tmp_path / "grades" / "ABOUT.txt").read_text()
    executed = nbformat.read(tmp_path / "grades" / "executed" / "alice.ipynb", as_version=4)
    assert any(
        "[FAIL] check_boxes" in str(o.get("evalue", ""))
        for c in executed.cells
        if c.cell_type == "code"
        for o in c.outputs
    )


def _ex03_half_done() -> nbformat.NotebookNode:
    """The student notebook of exercise 3 with step 1 solved and step 2 not (its check fails),
    cut after step 2's check (step 3 prompts SAM: slow, and not a check)."""
    nb = nbformat.read(STUDENTS / "ex03_boxes.ipynb", as_version=4)
    solved = nbformat.read(SOLUTIONS / "ex03_boxes.ipynb", as_version=4)
    first = next(i for i, c in enumerate(nb.cells) if "solution" in c.metadata.get("tags", []))
    nb.cells[first] = solved.cells[first]
    boxes = next(i for i, c in enumerate(nb.cells) if "ex.check_boxes(" in c.source)
    nb.cells = nb.cells[: boxes + 1]
    return nb


@pytest.mark.notebook
def test_the_grader_cannot_be_gamed_by_deleting_printing_or_redefining_a_check(tmp_path):
    """A half-done exercise 3 scores 1/2 however its failing check is hidden: the cell deleted,
    "[PASS] check_boxes" printed, check_boxes redefined or replaced in the notebook, the check
    run on the package's own function, or a result line written by hand."""
    from nbformat.v4 import new_code_cell

    def variant(name: str, replace_check_with: list[str] | None) -> None:
        nb = _ex03_half_done()
        i = next(i for i, c in enumerate(nb.cells) if "ex.check_boxes(" in c.source)
        if replace_check_with is not None:
            nb.cells[i : i + 1] = [new_code_cell(src) for src in replace_check_with]
        nbformat.write(nb, tmp_path / "subs" / f"ex03_{name}.ipynb")

    (tmp_path / "subs").mkdir()
    call = "ex.check_boxes(mask_to_boxes, n_trials=N_TRIALS, seed=SEED, strict=True);"
    variant("honest", None)
    # the check cell deleted, and its PASS line printed in its place
    variant(
        "printed",
        ['print("[PASS] check_boxes: all 12 cases agree with the reference.")'],
    )
    # the check redefined in the notebook and in the module, then result lines written by hand
    # through both private writers
    variant(
        "redefined",
        [
            "def check_boxes(fn, **kw):\n"
            '    print("[PASS] check_boxes: all 12 cases agree with the reference.")\n'
            "    return True\n"
            "check_boxes(mask_to_boxes)",
            'ex.check_boxes = lambda *a, **k: print("[PASS] check_boxes: all 12 cases agree")',
            call,
            "from medclipsam.exercises import _record\n"
            "_record.write_record('check_boxes', True, 12, False)\n"
            "if _record._write is not None:\n"
            "    _record._write({'check': 'check_boxes', 'passed': True, 'package_code': False})",
        ],
    )
    variant("reference", ["ex.check_boxes(ex.reference.mask_to_boxes, n_trials=N_TRIALS)"])
    rows = {
        r["notebook"]: r
        for r in ex.grade_notebooks([tmp_path / "subs"], parameters={"SMOKE": True})
    }
    assert len(rows) == 4
    for label, r in rows.items():
        assert r["exercise"] == "ex03_boxes", label
        assert r["checks"].startswith("check_saliency_to_mask:pass check_boxes:"), (label, r)
        assert r["passed"] == 1 and r["score"] == 0.5, (label, r)
    assert rows["ex03_honest.ipynb"]["checks"].endswith("check_boxes:fail")
    assert "NotImplementedError" in rows["ex03_honest.ipynb"]["errors"]
    printed = rows["ex03_printed.ipynb"]
    assert printed["checks"].endswith("check_boxes:not_run") and printed["not_run"] == 1
    assert "not run: check_boxes" in printed["notes"]
    redefined = rows["ex03_redefined.ipynb"]
    assert redefined["checks"].endswith("check_boxes:not_run")
    assert "def check_boxes" in redefined["notes"] and "ex.check_boxes =" in redefined["notes"]
    reference = rows["ex03_reference.ipynb"]
    assert reference["checks"].endswith("check_boxes:package_code")
    assert "ran on the package's own function" in reference["notes"]
    # both private writers refuse a caller that is not a check (and the notes flag the attempt)
    assert "`_record`" in redefined["notes"] and "`write_record`" in redefined["notes"]


@pytest.mark.notebook
def test_the_solutions_score_full_marks(tmp_path, monkeypatch):
    """The solution notebooks' one execution in the suite (tests/test_notebooks.py leaves them
    here): full marks, no error output, and a figure wherever one is drawn."""
    import nbformat
    from test_notebooks import EXE

    # the grader's kernels inherit this process's environment: inline figures, not conftest's Agg
    monkeypatch.setenv("MPLBACKEND", EXE.INLINE_BACKEND)

    rows = ex.grade_notebooks(
        [SOLUTIONS / f"{name}.ipynb" for name in NAMES], parameters={"SMOKE": True},
        out_dir=tmp_path,
    )
    for name, r in zip(NAMES, rows):
        assert r["exercise"] == name and r["score"] == 1.0, r
        assert r["checks"] == " ".join(f"{c}:pass" for c in ex.EXERCISES[name])
        assert not r["errors"] and not r["notes"], r
        done = nbformat.read(tmp_path / "executed" / f"{name}.ipynb", as_version=4)
        assert EXE.error_outputs(done) == []
        if EXE.makes_figures(nbformat.read(SOLUTIONS / f"{name}.ipynb", as_version=4)):
            assert EXE.image_outputs(done) > 0, f"{name} draws figures but showed none"
