"""Take-aways a lesson computes from the table it just printed, never writes by hand.

The toy world changes (retrained models, new phantoms), and a sentence such as "boxes beat points"
stays in a lesson long after its table says otherwise. So every sentence that states a measured
outcome (a winner, a ranking, whether two results can be told apart, whether the toy agrees with
the paper) is made here from the numbers, and carries those numbers with it:

* :func:`compare`: which entry of a table is best, by how much, and whether the 95 % intervals of
  the best and the runner-up overlap (then the data cannot tell them apart);
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


def _overlap(a: Mapping, b: Mapping) -> bool | None:
    """Whether two estimates' intervals overlap (None when either has no interval)."""
    if a["low"] is None or b["low"] is None:
        return None
    return not (a["low"] > b["high"] or b["low"] > a["high"])


def _order(values: Mapping[str, float], higher_is_better: bool) -> list[str]:
    return sorted(values, key=lambda k: -values[k] if higher_is_better else values[k])


def compare(
    results: Mapping[str, Any],
    *,
    what: str = "Dice",
    higher_is_better: bool = True,
    digits: int = 3,
    context: str = "",
) -> dict:
    """The best entry of ``results`` (name -> estimate, see :func:`estimate`), its margin over
    the runner-up, and whether their intervals overlap, as one sentence with its numbers.

    ``context`` starts the sentence (e.g. ``"On breast"``). Ties are reported as ties."""
    if len(results) < 2:
        raise ValueError("compare needs at least two results")
    est = {str(k): estimate(v) for k, v in results.items()}
    order = _order({k: e["mean"] for k, e in est.items()}, higher_is_better)
    best, second = order[0], order[1]
    margin = abs(est[best]["mean"] - est[second]["mean"])
    overlap = _overlap(est[best], est[second])
    lead = f"{context}: " if context else ""
    better = "highest" if higher_is_better else "lowest"
    if round(margin, digits) == 0:
        text = (
            f"{lead}{best} and {second} tie on {what} "
            f"({_fmt(est[best]['mean'], digits)})"
        )
    else:
        text = (
            f"{lead}{best} has the {better} {what}, {_fmt(est[best]['mean'], digits)}"
            f"{_interval(est[best], digits)}, ahead of {second} "
            f"({_fmt(est[second]['mean'], digits)}{_interval(est[second], digits)}) "
            f"by {_fmt(margin, digits)}"
        )
    if overlap is True:
        text += "; their 95 % intervals overlap, so these images cannot tell the two apart"
    elif overlap is False:
        text += "; their 95 % intervals do not overlap"
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
        "overlap": overlap,
        "digits": digits,
    }


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
    winner, the overlap and the agreement from the numbers, independently of the code above."""
    kind, text, bad = claim.get("kind"), str(claim.get("text", "")), []
    if kind == "compare":
        res = claim["results"]
        sign = 1 if claim["higher_is_better"] else -1
        top = max(res, key=lambda k: sign * res[k]["mean"])
        if sign * res[claim["winner"]]["mean"] < sign * res[top]["mean"]:
            bad.append(f"names {claim['winner']} best, but {top} scores better")
        a, b = res[claim["winner"]], res[claim["runner_up"]]
        if a["low"] is not None and b["low"] is not None:
            apart = a["low"] > b["high"] or b["low"] > a["high"]
            said_apart = "do not overlap" in text
            if apart != said_apart:
                bad.append(f"says the intervals {'do not ' if said_apart else ''}overlap: "
                           f"{a} vs {b}")
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
