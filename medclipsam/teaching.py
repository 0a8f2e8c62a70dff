"""Take-aways a lesson computes from the table it just printed, never writes by hand.

The toy world changes (retrained models, new phantoms), and a sentence such as "boxes beat points"
stays in a lesson long after its table says otherwise. So every sentence that states a measured
outcome (a winner, a ranking, whether two results can be told apart, whether the toy agrees with
the paper) is made here from the numbers, and carries those numbers with it:

* :func:`compare`: which entry of a table is best, by how much, and, for results on the same
  images, the paired difference of the best and the runner-up with its 95 % interval (whether
  these images can tell the two apart);
* :func:`versus_paper`: the toy's ranking of some settings beside the paper's, and every pair the
  two order differently;
* :func:`diagnose_box`: why a box prompt missed (which component of the coarse mask it framed);
* :func:`share`: how often something happened (e.g. how many pseudo-label errors fall on a decoy);
* :func:`state`: shows the sentences (Markdown in Jupyter, plain text elsewhere) and records them,
  with their numbers, as JSON under :data:`MIME` in the notebook's output, where
  :func:`check_claim` (and tests/test_lesson_claims.py) re-derive each one from its numbers.

Each claim is a plain ``dict``: ``kind``, ``text`` and the numbers it rests on.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from .metrics import paired_difference, summarize

__all__ = [
    "MIME",
    "check_claim",
    "claims_in",
    "compare",
    "diagnose_box",
    "estimate",
    "share",
    "state",
    "versus_paper",
]

#: The output type under which :func:`state` records its claims in a notebook.
MIME = "application/vnd.medclipsam.claims+json"


def estimate(value: Any) -> dict[str, float | None]:
    """``{"mean", "low", "high"}`` from a number, a ``(mean, low, high)`` triple, or a mapping
    with ``mean`` (or ``dice``) and ``ci_low``/``ci_high`` (or ``low``/``high``, or ``ci``)."""
    if isinstance(value, Mapping):
        mean = value.get("mean", value.get("dice"))
        low = value.get("ci_low", value.get("low"))
        high = value.get("ci_high", value.get("high"))
        if low is None and "ci" in value:
            low, high = value["ci"]
    elif isinstance(value, Sequence) and not isinstance(value, str):
        mean, low, high = (list(value) + [None, None])[:3]
    else:
        mean, low, high = value, None, None
    out = {"mean": float(mean), "low": None, "high": None}
    if low is not None and high is not None:
        out["low"], out["high"] = float(low), float(high)
    return out


def _fmt(x: float, digits: int) -> str:
    return f"{x:.{digits}f}"


def _interval(e: Mapping, digits: int) -> str:
    return f" [{_fmt(e['low'], digits)}, {_fmt(e['high'], digits)}]" if e["low"] is not None else ""


def _order(values: Mapping[str, float], higher_is_better: bool) -> list[str]:
    return sorted(values, key=lambda k: -values[k] if higher_is_better else values[k])


def _per_image(value: Any) -> np.ndarray | None:
    """``value`` as per-image numbers when it is a list or a 1-D array (a tuple is an estimate's
    ``(mean, low, high)``, see :func:`estimate`)."""
    if not isinstance(value, (list, np.ndarray)):
        return None
    arr = np.asarray(value, dtype=np.float64)
    return arr if arr.ndim == 1 else None


def compare(
    results: Mapping[str, Any],
    *,
    what: str = "Dice",
    higher_is_better: bool = True,
    digits: int = 3,
    context: str = "",
    paired: bool | None = None,
    n_boot: int = 2000,
    unit: str = "images",
) -> dict:
    """The best entry of ``results``, its margin over the runner-up and, when the entries are
    scored on the same images, whether the data can tell the two apart, as one sentence with its
    numbers.

    ``results``: name -> the per-image values (a list or an array), the same images in the same
    order for every entry (``paired``; the default whenever every value is one of equal length):
    the verdict then rests on the **paired difference** of the best and the runner-up
    (:func:`medclipsam.metrics.paired_difference`: mean over the images, 95 % bootstrap interval,
    wins and losses). Two separate intervals of results on the same images overlap even when one
    setting wins on nearly every image, so no verdict is drawn from them: entries given as
    estimates (a number, a ``(mean, low, high)`` tuple, a mapping; see :func:`estimate`) get their
    numbers stated and no verdict. ``context`` starts the sentence (e.g. ``"On breast"``); ``unit``
    names what was compared (``"queries"`` for retrieval)."""
    if len(results) < 2:
        raise ValueError("compare needs at least two results")
    values = {str(k): _per_image(v) for k, v in results.items()}
    lengths = {len(v) for v in values.values() if v is not None}
    if paired is None:
        paired = all(v is not None for v in values.values()) and len(lengths) == 1
    if paired and not (all(v is not None for v in values.values()) and len(lengths) == 1):
        raise ValueError("paired=True needs the per-image values of every entry, on the same images")
    if paired:
        est = {k: _estimate_values(v) for k, v in values.items()}
    else:
        est = {str(k): estimate(v) for k, v in results.items()}
    order = _order({k: e["mean"] for k, e in est.items()}, higher_is_better)
    best, second = order[0], order[1]
    margin = abs(est[best]["mean"] - est[second]["mean"])
    lead = f"{context}: " if context else ""
    better = "highest" if higher_is_better else "lowest"
    diff = None
    if round(margin, digits) == 0:
        text = f"{lead}{best} and {second} tie on {what} ({_fmt(est[best]['mean'], digits)})"
    elif paired:
        sign = 1.0 if higher_is_better else -1.0
        diff = paired_difference(sign * values[best], sign * values[second], n_boot=n_boot)
        text = (
            f"{lead}{best} has the {better} {what}, {_fmt(est[best]['mean'], digits)}, ahead of "
            f"{second} ({_fmt(est[second]['mean'], digits)}); on the same {diff['n']} {unit} the "
            f"paired difference is {_signed(diff['mean'], digits)} [{_signed(diff['ci_low'], digits)}, "
            f"{_signed(diff['ci_high'], digits)}] ({diff['wins']} better, {diff['losses']} worse)"
        )
        if diff["ci_low"] > 0:
            text += f": the interval lies above 0, so {best} is better on {unit} like these"
        else:
            text += f": the interval includes 0, so these {unit} cannot tell the two apart"
    else:
        text = (
            f"{lead}{best} has the {better} {what}, {_fmt(est[best]['mean'], digits)}"
            f"{_interval(est[best], digits)}, ahead of {second} "
            f"({_fmt(est[second]['mean'], digits)}{_interval(est[second], digits)}) "
            f"by {_fmt(margin, digits)} (no per-image values: no test of the difference)"
        )
    if len(order) > 2:
        rest = ", ".join(f"{k} {_fmt(est[k]['mean'], digits)}" for k in order[2:])
        text += f" (then {rest})"
    return {
        "kind": "compare",
        "text": text + ".",
        "what": what,
        "higher_is_better": higher_is_better,
        "results": est,
        "winner": best,
        "runner_up": second,
        "margin": margin,
        "paired": diff,
        "values": {k: [float(x) for x in values[k]] for k in (best, second)} if diff else None,
        "digits": digits,
    }


def _estimate_values(v: np.ndarray) -> dict[str, float | None]:
    s = summarize([{"v": float(x)} for x in v], ["v"])["v"]
    return {"mean": float(np.mean(v)), "low": s["ci_low"], "high": s["ci_high"]}


def _signed(x: float, digits: int) -> str:
    return f"{x:+.{digits}f}"


def versus_paper(
    toy: Mapping[str, float],
    paper: Mapping[str, float],
    *,
    what: str = "Dice",
    higher_is_better: bool = True,
    digits: int = 3,
    paper_digits: int = 1,
    context: str = "",
) -> dict:
    """The toy's order of the settings in both tables beside the paper's: whether they agree, and
    which pairs they order differently (each with both tables' numbers)."""
    names = [k for k in paper if k in toy]
    if len(names) < 2:
        raise ValueError("versus_paper needs at least two settings present in both tables")
    t = {k: float(toy[k]) for k in names}
    p = {k: float(paper[k]) for k in names}
    t_order, p_order = _order(t, higher_is_better), _order(p, higher_is_better)
    flipped = []
    for i, a in enumerate(p_order):
        for b in p_order[i + 1 :]:  # the paper puts a ahead of b
            ahead = t[a] > t[b] if higher_is_better else t[a] < t[b]
            if not ahead:
                flipped.append([a, b])
    sign = " > " if higher_is_better else " < "
    lead = f"{context}: " if context else ""
    text = (
        f"{lead}the paper orders {sign.join(p_order)} "
        f"({', '.join(f'{k} {_fmt(p[k], paper_digits)}' for k in p_order)}); "
        f"this run orders {sign.join(t_order)} "
        f"({', '.join(f'{k} {_fmt(t[k], digits)}' for k in t_order)})"
    )
    if not flipped:
        text += ": the toy agrees with the paper's order."
    else:
        pairs = "; ".join(
            f"the paper has {a} ahead of {b}, this run has {b} "
            + ("level with" if round(t[a] - t[b], digits) == 0 else "ahead of")
            + f" {a}"
            for a, b in flipped
        )
        text += f": the toy disagrees with the paper ({pairs})."
    return {
        "kind": "versus_paper",
        "text": text,
        "what": what,
        "higher_is_better": higher_is_better,
        "toy": t,
        "paper": p,
        "agrees": not flipped,
        "flipped": flipped,
        "digits": digits,
    }


def share(count: int, total: int, *, of: str, digits: int = 0) -> dict:
    """``count`` of ``total`` as a sentence: ``"7 of 20 (35 %) <of>."``."""
    count, total = int(count), int(total)
    pct = 100.0 * count / total if total else float("nan")
    text = f"{count} of {total}" + (f" ({pct:.{digits}f} %)" if total else "") + f" {of}."
    return {"kind": "share", "text": text, "count": count, "total": total}


def check_claim(claim: Mapping) -> list[str]:
    """What in ``claim`` its own numbers contradict (empty: the claim holds). Re-derives the
    winner, the paired difference's verdict and the agreement from the numbers, independently of the code above."""
    kind, text, bad = claim.get("kind"), str(claim.get("text", "")), []
    if kind == "compare":
        res = claim["results"]
        sign = 1 if claim["higher_is_better"] else -1
        top = max(res, key=lambda k: sign * res[k]["mean"])
        if sign * res[claim["winner"]]["mean"] < sign * res[top]["mean"]:
            bad.append(f"names {claim['winner']} best, but {top} scores better")
        a, b = res[claim["winner"]], res[claim["runner_up"]]
        d = claim.get("paired")
        if d is not None:
            va, vb = (np.asarray(claim["values"][k], dtype=np.float64) for k in (claim["winner"], claim["runner_up"]))
            mean = float(np.mean(sign * (va - vb)))
            if not math.isclose(mean, d["mean"], abs_tol=1e-9) or not d["ci_low"] <= mean <= d["ci_high"]:
                bad.append(f"its paired difference {d} is not that of its per-image values ({mean})")
            if ("lies above 0" in text) != (d["ci_low"] > 0):
                bad.append(f"its verdict does not follow the paired interval [{d['ci_low']}, {d['ci_high']}]")
        elif "like these" in text or "cannot tell" in text:
            bad.append("draws a verdict without the paired difference")
        if not math.isclose(abs(a["mean"] - b["mean"]), claim["margin"], abs_tol=1e-9):
            bad.append("its margin is not the difference of the two means")
        if claim["winner"] not in text:
            bad.append("its text does not name the winner")
    elif kind == "versus_paper":
        toy, paper, sign = claim["toy"], claim["paper"], 1 if claim["higher_is_better"] else -1
        flips = [
            (a, b) for a in paper for b in paper
            if sign * paper[a] > sign * paper[b] and not sign * toy[a] > sign * toy[b]
        ]
        if bool(flips) == bool(claim["agrees"]):
            bad.append(f"says agrees={claim['agrees']}, but the pairs ordered differently are {flips}")
        if ("the toy agrees with the paper" in text) != (not flips):
            bad.append("its text does not match the comparison")
    elif kind == "diagnosis":
        comps = claim["components"]
        if comps:
            areas = [c["area"] for c in comps]
            if areas[claim["largest"]] != max(areas):
                bad.append("the component it calls largest is not")
            hot = ("is not the largest" in text)
            if hot != (comps[claim["hottest"]]["peak"] > comps[claim["largest"]]["peak"]):
                bad.append("what it says of the hottest component does not match the peaks")
    elif kind == "share":
        if f"{claim['count']} of {claim['total']}" not in text:
            bad.append("its text does not state its count")
    else:
        bad.append(f"unknown kind {kind!r}")
    return bad


def _markdown(claims: Sequence[Mapping], title: str | None) -> str:
    head = f"**{title}**\n\n" if title else ""
    return head + "\n".join(f"- {c['text']}" for c in claims)


def state(*claims: Mapping, title: str | None = "Computed from the table above:") -> None:
    """Show the claims' sentences and record them (with their numbers) in the output."""
    claims = [dict(c) for c in claims]
    for c in claims:
        found = check_claim(c)
        if found:  # a bug here, not a student's mistake: fail loudly
            raise AssertionError(f"claim {c['text']!r} contradicts its numbers: {found}")
    text = (f"{title}\n" if title else "") + "\n".join(f"- {c['text']}" for c in claims)
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:  # pragma: no cover - plain Python without IPython
        get_ipython = None
    if get_ipython is not None and get_ipython() is not None:
        bundle = {
            "text/plain": text,
            "text/markdown": _markdown(claims, title),
            MIME: {"claims": json.loads(json.dumps(claims))},
        }
        display(bundle, raw=True)
    else:
        print(text)


def claims_in(nb: Any) -> list[dict]:
    """Every claim that :func:`state` recorded in an executed notebook (an ``nbformat`` node)."""
    out = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for o in cell.get("outputs", []):
            data = o.get("data", {})
            if MIME in data:
                payload = data[MIME]
                payload = json.loads(payload) if isinstance(payload, str) else payload
                out += list(payload["claims"])
    return out


def diagnose_box(saliency: Any, coarse: Any, gt: Any) -> dict:
    """Why a box prompt missed: the coarse mask's components, which one the box was drawn around
    (the largest), how much of the ground truth each covers, and where the saliency peaks.

    ``saliency`` (H, W) float, ``coarse`` the coarse mask *before* components were dropped,
    ``gt`` the ground truth. The sentence names what the numbers show, nothing more."""
    s, c, g = np.asarray(saliency, float), np.asarray(coarse, bool), np.asarray(gt, bool)
    labels, n = ndi.label(c, structure=np.ones((3, 3)))
    comps = []
    for i in range(1, n + 1):
        m = labels == i
        comps.append({
            "area": int(m.sum()),
            "gt_covered": float((m & g).sum() / max(int(g.sum()), 1)),
            "peak": float(s[m].max()),
        })
    largest = max(range(n), key=lambda i: comps[i]["area"]) if n else None
    hottest = max(range(n), key=lambda i: (comps[i]["peak"], i == largest)) if n else None
    best = max(range(n), key=lambda i: comps[i]["gt_covered"]) if n else None
    if not n:
        text = "The coarse mask is empty, so the box falls back to the whole image."
    else:
        lc = comps[largest]
        text = (
            f"The coarse mask has {n} component(s); the box goes around the largest "
            f"({lc['area']} px), which covers {100 * lc['gt_covered']:.0f} % of the ground truth"
        )
        if best != largest:
            text += (
                f", while a smaller one ({comps[best]['area']} px) covers "
                f"{100 * comps[best]['gt_covered']:.0f} %"
            )
        text += (
            ". The map's hottest component is the largest one."
            if hottest == largest
            else f". The map's hottest component (peak {comps[hottest]['peak']:.2f}) is not the "
            f"largest (peak {lc['peak']:.2f}): largest is not most salient."
        )
    return {
        "kind": "diagnosis",
        "text": text,
        "components": comps,
        "largest": largest,
        "hottest": hottest,
        "best": best,
    }
