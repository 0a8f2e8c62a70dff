"""Exercise 1: the DHN-NCE loss, checked against :func:`medclipsam.losses.dhn_nce`.

The student writes ``hard_negative_weights(sim, beta) -> [B, B]`` and
``dhn_nce(img, txt, tau=0.6, beta1=0.15, beta2=0.15) -> 0-d tensor``. The loss check compares the
value and its gradients on random batches (B from 2 to 40, float32 and float64, unnormalised
embeddings, near-duplicate captions with a small temperature), and names the usual mistakes by
recomputing the loss the way each mistake would.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import reference
from ._core import Case, CheckResult, compare_arrays, fmt, run_check, same_values, seeds

__all__ = ["check_dhn_nce", "check_hard_negative_weights", "loss_family"]


def loss_family(
    img: torch.Tensor,
    txt: torch.Tensor,
    tau: float,
    beta1: float,
    beta2: float,
    *,
    alpha: float = 0.0,
    normalise: bool = True,
    divide_by_tau: bool = True,
    weights: str = "row",
    factor: bool = True,
    reduce: str = "sum",
    directions: str = "both",
    transpose: bool = True,
) -> torch.Tensor:
    """The (D)HN-NCE family written out, with switches for the usual mistakes.

    Defaults give DHN-NCE. ``alpha`` > 0 keeps the positive in the denominator; ``weights``:
    ``"row"`` (correct: over the anchor's negatives), ``"none"`` (all 1), ``"col"`` (normalised
    over the other axis), ``"row_with_positive"`` (the positive counted in the normaliser);
    ``factor``: multiply the weights by ``B - 1``; ``reduce``: ``"sum"`` or ``"mean"`` of the two
    directions; ``directions``: ``"both"`` or ``"v2t"``; ``transpose``: the text-to-image term
    uses ``S^T`` (False: ``S`` again).
    """
    dtype = torch.float64
    i, t = img.to(dtype), txt.to(dtype)
    if normalise:
        i, t = F.normalize(i, dim=-1), F.normalize(t, dim=-1)
    sim = i @ t.T
    sim = sim / tau if divide_by_tau else sim * tau

    def direction(s: torch.Tensor, beta: float) -> torch.Tensor:
        b = s.shape[0]
        eye = torch.eye(b, dtype=torch.bool)
        if weights == "none":
            logw = torch.zeros_like(s)
        elif weights == "row":
            logw = torch.log_softmax((beta * s).masked_fill(eye, -math.inf), dim=1)
        elif weights == "col":
            logw = torch.log_softmax((beta * s).masked_fill(eye, -math.inf), dim=0)
        elif weights == "row_with_positive":
            logw = torch.log_softmax(beta * s, dim=1)
        else:
            raise ValueError(weights)
        if weights != "none" and factor:
            logw = logw + math.log(b - 1)
        terms = (logw + s).masked_fill(eye, -math.inf)
        pos = s.diagonal()
        if alpha > 0:
            terms = torch.cat([terms, (pos + math.log(alpha))[:, None]], dim=1)
        return (torch.logsumexp(terms, dim=1) - pos).mean()

    v2t = direction(sim, beta1)
    if directions == "v2t":
        return v2t
    t2v = direction(sim.T if transpose else sim, beta2)
    return v2t + t2v if reduce == "sum" else (v2t + t2v) / 2


# (hint, options of loss_family reproducing the mistake; None: a special variant)
_MISTAKES: list[tuple[str, dict[str, Any]]] = [
    (
        "your loss equals HN-NCE with the positive KEPT in the denominator (alpha = 1). DHN-NCE "
        "is decoupled: the sum inside the log runs over the negatives j != i only; leave "
        "e^{s_ii} out.",
        {"alpha": 1.0},
    ),
    (
        "your loss equals plain InfoNCE (the CLIP loss): the positive is in the denominator and "
        "every negative weighs 1. DHN-NCE drops the positive from the denominator AND weighs each "
        "negative by w_ij.",
        {"alpha": 1.0, "weights": "none"},
    ),
    (
        "your loss equals DCL: the positive is correctly left out, but the negatives are not "
        "re-weighted. Multiply each e^{s_ij} by w_ij = (B-1) e^{beta s_ij} / sum_{k != i} "
        "e^{beta s_ik}.",
        {"weights": "none"},
    ),
    (
        "your loss equals DHN-NCE with the sign of beta flipped: a harder negative (higher s_ij) "
        "must get MORE weight, w_ij proportional to exp(+beta s_ij).",
        {"_negate_beta": True},
    ),
    (
        "beta1 and beta2 are swapped: beta1 weighs the image-to-text term (rows of S = image i "
        "against every text), beta2 the text-to-image term (rows of S^T).",
        {"_swap_beta": True},
    ),
    (
        "the embeddings are not L2-normalised: use F.normalize(img, dim=-1) and "
        "F.normalize(txt, dim=-1) before the dot products (cosine similarity / tau).",
        {"normalise": False},
    ),
    (
        "you multiplied by tau; the similarity is s_ij = cos(I_i, T_j) / tau.",
        {"divide_by_tau": False},
    ),
    ("you averaged the two directions; the loss is their SUM, L_v2t + L_t2v.", {"reduce": "mean"}),
    (
        "only the image-to-text direction is there: add L_t2v, the same formula on S^T with beta2.",
        {"directions": "v2t"},
    ),
    (
        "both directions use S; the text-to-image term uses the transpose S^T (its rows are the "
        "texts).",
        {"transpose": False},
    ),
    (
        "the weights lack the factor (B - 1): w_ij = (B-1) e^{beta s_ij} / sum_{k != i} "
        "e^{beta s_ik}, so that a row of weights sums to B - 1 (with beta = 0 every weight is 1).",
        {"factor": False},
    ),
    (
        "the weights are normalised along the wrong axis (down a column, over the anchors). For "
        "anchor i, normalise over ITS negatives: the sum over k != i runs along row i. (The "
        "paper's public code has this bug.)",
        {"weights": "col"},
    ),
    (
        "the weights' normaliser includes the positive: the sum in w_ij's denominator runs over "
        "k != i only.",
        {"weights": "row_with_positive"},
    ),
]


def _variant(img, txt, tau, beta1, beta2, opts: dict) -> torch.Tensor:
    opts = dict(opts)
    if opts.pop("_negate_beta", False):
        beta1, beta2 = -beta1, -beta2
    if opts.pop("_swap_beta", False):
        beta1, beta2 = beta2, beta1
    return loss_family(img, txt, tau, beta1, beta2, **opts)


def _make_cases(n_trials: int, seed: int) -> list[Case]:
    cases = []

    def add(
        label: str,
        img: torch.Tensor,
        txt: torch.Tensor,
        tau: float,
        b1: float,
        b2: float,
        rtol: float = 1e-7,
        grad: bool = True,
    ) -> None:
        cases.append(
            Case(
                f"{label}; B={img.shape[0]}, D={img.shape[1]}, {str(img.dtype)[6:]}, "
                f"tau={tau:g}, beta1={b1:g}, beta2={b2:g}",
                (img, txt),
                {"tau": tau, "beta1": b1, "beta2": b2},
                {"rtol": rtol, "grad": grad},
            )
        )

    g = torch.Generator().manual_seed(seed)
    # a small batch whose values are easy to read in the feedback
    img = torch.randn(2, 4, generator=g, dtype=torch.float64)
    add(
        "smallest batch (B=2)",
        img,
        img + 0.5 * torch.randn(2, 4, generator=g, dtype=torch.float64),
        0.5,
        0.7,
        1.3,
    )
    # the paper's defaults
    img = torch.randn(8, 16, generator=g, dtype=torch.float64)
    add(
        "the paper's tau and beta",
        img,
        img + torch.randn(8, 16, generator=g, dtype=torch.float64),
        0.6,
        0.15,
        0.15,
    )
    for s in seeds(seed, n_trials):
        r = np.random.default_rng(s)
        b, d = int(r.integers(2, 41)), int(r.choice([3, 8, 16, 32, 64]))
        tg = torch.Generator().manual_seed(s)
        img = torch.randn(b, d, generator=tg, dtype=torch.float64)
        txt = img + float(r.uniform(0.3, 2.0)) * torch.randn(
            b, d, generator=tg, dtype=torch.float64
        )
        if r.random() < 0.5:  # raw tower outputs: norms far from 1
            img = img * torch.from_numpy(r.uniform(0.2, 5.0, (b, 1)))
            txt = txt * torch.from_numpy(r.uniform(0.2, 5.0, (b, 1)))
        tau = float(r.choice([0.05, 0.1, 0.3, 0.6, 1.0]))
        b1, b2 = (round(float(x), 2) for x in r.uniform(0.1, 2.0, 2))
        add(f"random (seed {s})", img, txt, tau, b1, b2)
    # float32, small tau, near-duplicate embeddings: similarities near 1/tau = 100
    tg = torch.Generator().manual_seed(seed + 7)
    base = torch.randn(1, 32, generator=tg)
    img = base + 0.05 * torch.randn(12, 32, generator=tg)
    txt = base + 0.05 * torch.randn(12, 32, generator=tg)
    add(
        "large similarities (near-duplicate captions, float32)",
        img,
        txt,
        0.01,
        0.5,
        0.5,
        rtol=1e-4,
        grad=False,
    )
    return cases


def _run(fn: Callable, case: Case, args: tuple, kwargs: dict) -> dict:
    img, txt = args
    grad = case.extra["grad"]
    if grad:
        img, txt = img.clone().requires_grad_(True), txt.clone().requires_grad_(True)
    out = fn(img, txt, **kwargs)
    res: dict = {"value": out, "grads": None, "problem": None}
    if not isinstance(out, torch.Tensor):
        res["problem"] = (
            f"returned a {type(out).__name__}; return a torch tensor (a loss you can "
            "call .backward() on), not a Python or NumPy number"
        )
        return res
    if out.ndim != 0:
        res["problem"] = (
            f"returned a tensor of shape {tuple(out.shape)}; the loss is one number: "
            "a 0-d tensor (reduce with .mean() / .sum() as the formula says)"
        )
        return res
    if grad:
        if not out.requires_grad:
            res["problem"] = (
                "the returned loss has no gradient (requires_grad is False): "
                "compute it with torch operations on img and txt, no .detach(), "
                ".item(), .numpy() or torch.no_grad()"
            )
            return res
        res["grads"] = torch.autograd.grad(out, (img, txt), allow_unused=True)
    return res


def _compare(expected: dict, got: dict, case: Case) -> str | None:
    if got["problem"]:
        return got["problem"]
    rtol = case.extra["rtol"]
    e, v = expected["value"], got["value"]
    diff = compare_arrays(e, v, rtol=rtol, atol=rtol * 1e-2, what="loss")
    if diff is not None:
        return diff
    if expected["grads"] is not None:
        for name, ge, gg in zip(("img", "txt"), expected["grads"], got["grads"]):
            if gg is None:
                return f"the loss does not depend on {name} (its gradient is None)"
            d = compare_arrays(
                ge, gg, rtol=1e-6, atol=1e-9, what=f"gradient with respect to {name}"
            )
            if d is not None:
                return (
                    "the loss value is right but its gradient is not:\n    "
                    + d
                    + "\n    The weights w_ij are part of the formula and are differentiated "
                    "through: do not .detach() them or compute them under torch.no_grad()."
                )
    return None


def _loss_mistakes(case: Case) -> list[tuple[str, torch.Tensor]]:
    """Each named wrong loss on this case's inputs, most specific first."""
    img, txt = case.args
    kw = case.kwargs
    return [
        (hint, _variant(img, txt, kw["tau"], kw["beta1"], kw["beta2"], opts).detach())
        for hint, opts in _MISTAKES
    ]


def _loss_matches(output: dict, variant: torch.Tensor, case: Case) -> bool | None:
    if output["problem"]:
        return None
    v = output["value"].detach()
    if not torch.isfinite(v).all():
        return None
    tol = {"rtol": max(case.extra["rtol"], 1e-6) * 10, "atol": 1e-9}
    return same_values(v, variant, **tol)


def _diagnose(got: dict, case: Case, expected: dict) -> str | None:
    """The hint that is no wrong formula: an overflow. (A right value with a wrong gradient is
    explained by the comparison itself.)"""
    if got["problem"]:
        return None
    if not torch.isfinite(got["value"].detach()).all():
        return (
            "the loss overflows for large similarities (s_ij near 1/tau = 100): e^100 is inf "
            "in float32. Work in log space: log sum_j w_ij e^{s_ij} = "
            "logsumexp_j(log w_ij + s_ij), with log w_ij from torch.log_softmax."
        )
    return None


def check_dhn_nce(
    student_fn: Callable[..., torch.Tensor],
    *,
    n_trials: int = 10,
    seed: int = 0,
    strict: bool = False,
    verbose: bool = True,
) -> CheckResult:
    """Compare ``student_fn(img, txt, tau=..., beta1=..., beta2=...)`` with
    :func:`medclipsam.losses.dhn_nce` on ``n_trials`` random batches plus edge cases (B = 2,
    the paper's settings, float32 with similarities near 100), value and gradients.

    Feedback names the input that differs, by how much, and the mistake when the output equals
    a known wrong variant (positive kept in the denominator, no hard-negative weights, the sign
    of beta, ...). ``strict=True`` raises ``AssertionError`` with the feedback on failure.
    """
    cases = _make_cases(n_trials, seed)
    return run_check(
        "check_dhn_nce",
        student_fn,
        cases,
        run=_run,
        reference=reference.dhn_nce,
        compare=_compare,
        mistakes=_loss_mistakes,
        matches=_loss_matches,
        diagnose=_diagnose,
        strict=strict,
        verbose=verbose,
        success=f"random and edge cases: B from 2 to 40, float32 and float64, tau {fmt(0.01)} "
        "to 1, value and gradient",
    )


# -- the weights alone -----------------------------------------------------------------------------


def _weight_cases(n_trials: int, seed: int) -> list[Case]:
    g = torch.Generator().manual_seed(seed)
    cases = [
        Case("smallest batch (B=2)", (torch.tensor([[2.0, 0.5], [-1.0, 1.5]]), 0.5)),
        Case("beta = 0 (every negative weighs 1)", (torch.randn(4, 4, generator=g) * 3, 0.0)),
        Case(
            "tied similarities",
            (
                torch.tensor(
                    [
                        [3.0, 1.0, 1.0, 2.0],
                        [1.0, 3.0, 2.0, 2.0],
                        [0.0, 0.0, 3.0, 0.0],
                        [1.0, 2.0, 1.0, 3.0],
                    ]
                ),
                0.7,
            ),
        ),
        Case(
            "large similarities (beta * s up to 150, float32)",
            (90 + 10 * torch.randn(6, 6, generator=g), 1.5),
        ),
    ]
    for s in seeds(seed, n_trials):
        r = np.random.default_rng(s)
        b = int(r.integers(2, 33))
        sim = torch.from_numpy(r.normal(0, float(r.uniform(0.5, 8)), (b, b)))
        if r.random() < 0.5:
            sim = sim.float()
        beta = round(float(r.uniform(-0.1, 2.0)), 2) if r.random() < 0.9 else 0.15
        cases.append(
            Case(
                f"random (seed {s}); sim [{b}, {b}] {str(sim.dtype)[6:]}, beta={beta:g}",
                (sim, beta),
            )
        )
    return cases


def _weight_variants(sim: torch.Tensor, beta: float) -> list[tuple[str, torch.Tensor]]:
    s = sim.double()
    b = s.shape[0]
    eye = torch.eye(b, dtype=torch.bool)
    row = torch.softmax((beta * s).masked_fill(eye, -math.inf), dim=1)
    return [
        (
            "the weights lack the factor (B - 1): a row of weights must sum to B - 1 (so that with "
            "beta = 0 every weight is 1, as in the plain loss).",
            row,
        ),
        (
            "the positive is in the normaliser: the sum in the denominator runs over k != i only.",
            ((b - 1) * torch.softmax(beta * s, dim=1)).masked_fill(eye, 0.0),
        ),
        (
            "the diagonal (the positive) must be 0: it is not a negative.",
            (b - 1) * torch.softmax(beta * s, dim=1),
        ),
        (
            "normalised down the columns; normalise along each ROW (anchor i against its negatives "
            "k != i): softmax over dim=1.",
            (b - 1) * torch.softmax((beta * s).masked_fill(eye, -math.inf), dim=0),
        ),
        (
            "the sign of beta is flipped: w_ij grows with exp(+beta s_ij).",
            (b - 1) * torch.softmax((-beta * s).masked_fill(eye, -math.inf), dim=1),
        ),
        (
            "you used s_ij instead of beta * s_ij in the exponent.",
            (b - 1) * torch.softmax(s.masked_fill(eye, -math.inf), dim=1),
        ),
    ]


def _weights_matches(output: Any, variant: torch.Tensor, case: Case) -> bool | None:
    if not isinstance(output, torch.Tensor):
        return None
    if output.is_floating_point() and not torch.isfinite(output).all():
        return None
    return same_values(output, variant, 1e-5, 1e-7)


def _weights_diagnose(got: Any, case: Case, expected: torch.Tensor) -> str | None:
    """The hint that is no wrong formula: an overflow."""
    if isinstance(got, torch.Tensor) and got.is_floating_point() and not torch.isfinite(got).all():
        return (
            "NaN/inf for large similarities: exp(150) overflows float32. Use torch.softmax "
            "(or log_softmax, then exp) on beta * s with the diagonal set to -inf."
        )
    return None


def _weights_compare(expected: torch.Tensor, got: Any, case: Case) -> str | None:
    if not isinstance(got, torch.Tensor):
        return f"returned a {type(got).__name__}; return a torch tensor [B, B]"
    return compare_arrays(expected, got, rtol=1e-5, atol=1e-6, what="weights")


def check_hard_negative_weights(
    student_fn: Callable[[torch.Tensor, float], torch.Tensor],
    *,
    n_trials: int = 8,
    seed: int = 0,
    strict: bool = False,
    verbose: bool = True,
) -> CheckResult:
    """Compare ``student_fn(sim [B, B], beta) -> [B, B]`` with
    :func:`medclipsam.losses.hard_negative_weights`: ``w_ij = (B-1) exp(beta s_ij) /
    sum_{k != i} exp(beta s_ik)`` off the diagonal, 0 on it."""
    return run_check(
        "check_hard_negative_weights",
        student_fn,
        _weight_cases(n_trials, seed),
        run=lambda fn, case, a, k: fn(*a, **k),
        reference=reference.hard_negative_weights,
        compare=_weights_compare,
        mistakes=lambda case: _weight_variants(*case.args),
        matches=_weights_matches,
        diagnose=_weights_diagnose,
        strict=strict,
        verbose=verbose,
        success="random and edge cases: B = 2, beta = 0, ties, beta * s up to 150",
    )
