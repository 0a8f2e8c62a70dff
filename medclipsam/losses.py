"""Contrastive losses for stage 1 (fine-tuning BiomedCLIP on image-caption pairs).

Four symmetric losses over a batch of ``B`` matching image/text embedding pairs, written as in the
MedCLIP-SAM paper, not as in its public reference code (whose ``loss/hnl.py`` normalises the
weights along the wrong axis, takes the log element by element instead of the log of a sum over
negatives, ignores the model's logit scale and assumes a full last batch):

* ``info_nce``: the CLIP loss, cross-entropy with the positive in the denominator.
* ``dcl``: decoupled contrastive loss (Yeh et al. 2022), positive removed from the denominator.
* ``hn_nce``: hard-negative NCE (Radenovic et al. 2023): negatives re-weighted by
  ``w_ij = (B-1) exp(beta s_ij) / sum_{k != i} exp(beta s_ik)``, positive kept with weight ``alpha``.
* ``dhn_nce``: decoupled hard-negative NCE, ``hn_nce`` with ``alpha = 0`` (the paper's loss).

Conventions shared by all four:

* ``s_ij = I_i . T_j / tau`` (fixed temperature) or ``s_ij = logit_scale * I_i . T_j`` (a model's
  learned scale, already exponentiated: pass ``model.logit_scale.exp()`` for open_clip models).
  Exactly one of ``tau`` / ``logit_scale`` must be given.
* The embeddings are L2-normalised here, so callers may pass raw tower outputs; normalising an
  already normalised embedding changes nothing.
* The total is the SUM of the two directions, ``L_v2t + L_t2v`` (as the paper writes it for
  DHN-NCE), each direction being the mean over the batch. ``beta1`` weighs the image-to-text
  negatives, ``beta2`` the text-to-image ones.
* ``B`` is always the actual batch size, so a short last batch is handled; ``B < 2`` raises
  because there are no negatives.
* Work happens in float32 (float64 if the inputs are float64) with autocast disabled, so bf16 or
  autocast training gives the float32 value of the bf16 embeddings; the hard-negative weights are
  combined in log space (log-sum-exp), so large similarities (small ``tau``) stay finite.
* The hard-negative weights are part of the formula and are differentiated through (not detached).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "LOSSES",
    "ContrastiveLoss",
    "dcl",
    "dhn_nce",
    "hard_negative_weights",
    "hn_nce",
    "info_nce",
]

ScaleLike = float | Tensor


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _check_batch(img: Tensor, txt: Tensor) -> int:
    if not isinstance(img, Tensor) or not isinstance(txt, Tensor):
        raise TypeError("img and txt must be torch tensors of shape (B, D)")
    if img.ndim != 2 or txt.ndim != 2:
        raise ValueError(
            f"img and txt must be 2-D (B, D) embeddings; got shapes {tuple(img.shape)} "
            f"and {tuple(txt.shape)}"
        )
    if img.shape != txt.shape:
        raise ValueError(
            f"img and txt must have the same shape (B pairs of D-dim embeddings); got "
            f"{tuple(img.shape)} and {tuple(txt.shape)}"
        )
    b = img.shape[0]
    if b < 2:
        raise ValueError(
            f"contrastive losses need a batch of at least 2 pairs (there are no negatives "
            f"otherwise); got B={b}. Drop or merge a last batch of size 1."
        )
    if not (img.is_floating_point() and txt.is_floating_point()):
        raise TypeError(f"embeddings must be floating point; got {img.dtype} and {txt.dtype}")
    return b


def _scale(tau: float | None, logit_scale: ScaleLike | None, dtype: torch.dtype,
           device: torch.device) -> ScaleLike:
    """Return the multiplier applied to cosine similarities (1/tau or logit_scale)."""
    if (tau is None) == (logit_scale is None):
        raise ValueError(
            "give exactly one of tau (fixed temperature) or logit_scale (a model's learned, "
            f"exponentiated scale); got tau={tau!r}, logit_scale={logit_scale!r}"
        )
    if tau is not None:
        tau = float(tau)
        if not (math.isfinite(tau) and tau > 0):
            raise ValueError(f"tau must be a positive finite number; got {tau}")
        return 1.0 / tau
    if isinstance(logit_scale, Tensor):
        if logit_scale.numel() != 1:
            raise ValueError(
                f"logit_scale must be a scalar; got shape {tuple(logit_scale.shape)}"
            )
        return logit_scale.to(device=device, dtype=dtype).reshape(())
    scale = float(logit_scale)  # type: ignore[arg-type]
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"logit_scale must be a positive finite number; got {scale}")
    return scale


def _similarity(img: Tensor, txt: Tensor, tau: float | None,
                logit_scale: ScaleLike | None) -> Tensor:
    """s_ij = scale * <I_i/|I_i|, T_j/|T_j|> in float32/float64, autocast off. Rows = images."""
    _check_batch(img, txt)
    dtype = _compute_dtype(img, txt)
    scale = _scale(tau, logit_scale, dtype, img.device)
    with torch.autocast(device_type=img.device.type, enabled=False):
        i = F.normalize(img.to(dtype), dim=-1)
        t = F.normalize(txt.to(dtype), dim=-1)
        return (i @ t.T) * scale


def _offdiag_mask(b: int, device: torch.device) -> Tensor:
    return ~torch.eye(b, dtype=torch.bool, device=device)


def _log_hard_negative_weights(sim: Tensor, beta: float) -> Tensor:
    """log w_ij, with -inf on the diagonal (rows = anchors)."""
    b = sim.shape[0]
    off = _offdiag_mask(b, sim.device)
    logits = (beta * sim).masked_fill(~off, float("-inf"))
    return math.log(b - 1) + torch.log_softmax(logits, dim=1)


def hard_negative_weights(sim: Tensor, beta: float) -> Tensor:
    """Hard-negative weights ``w_ij = (B-1) exp(beta s_ij) / sum_{k != i} exp(beta s_ik)``.

    ``sim`` is a (B, B) similarity matrix whose row ``i`` holds anchor ``i`` against every
    candidate (diagonal = positives). Returns a (B, B) tensor, zero on the diagonal, whose rows
    sum to ``B - 1``; with ``beta > 0`` a more similar (harder) negative weighs more, with
    ``beta = 0`` every negative weighs 1.
    """
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError(f"sim must be a square (B, B) matrix; got shape {tuple(sim.shape)}")
    if sim.shape[0] < 2:
        raise ValueError(f"need B >= 2 to have negatives; got B={sim.shape[0]}")
    return _log_hard_negative_weights(sim, float(beta)).exp()


def _check_alpha_beta(alpha: float, beta1: float, beta2: float) -> None:
    if not (math.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"alpha must be a finite number >= 0; got {alpha}")
    for name, value in (("beta1", beta1), ("beta2", beta2)):
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite; got {value}")


def _hn_nce_direction(sim: Tensor, alpha: float, beta: float) -> Tensor:
    """Mean over rows of -s_ii + log(alpha exp(s_ii) + sum_{j != i} w_ij exp(s_ij))."""
    pos = sim.diagonal()
    terms = _log_hard_negative_weights(sim, beta) + sim  # -inf on the diagonal
    if alpha > 0:
        terms = torch.cat([terms, (pos + math.log(alpha)).unsqueeze(1)], dim=1)
    return (torch.logsumexp(terms, dim=1) - pos).mean()


def info_nce(img: Tensor, txt: Tensor, *, tau: float | None = None,
             logit_scale: ScaleLike | None = None) -> Tensor:
    """CLIP loss: cross-entropy image->text plus text->image (sum of the two batch means)."""
    sim = _similarity(img, txt, tau, logit_scale)
    target = torch.arange(sim.shape[0], device=sim.device)
    return F.cross_entropy(sim, target) + F.cross_entropy(sim.T, target)


def dcl(img: Tensor, txt: Tensor, *, tau: float | None = None,
        logit_scale: ScaleLike | None = None) -> Tensor:
    """Decoupled contrastive loss: ``mean_i[-s_ii + log sum_{j != i} exp(s_ij)]``, both ways, summed."""
    sim = _similarity(img, txt, tau, logit_scale)
    pos = sim.diagonal()
    neg = sim.masked_fill(~_offdiag_mask(sim.shape[0], sim.device), float("-inf"))
    v2t = (torch.logsumexp(neg, dim=1) - pos).mean()
    t2v = (torch.logsumexp(neg, dim=0) - pos).mean()
    return v2t + t2v


def hn_nce(img: Tensor, txt: Tensor, *, alpha: float = 1.0, beta1: float = 0.15,
           beta2: float = 0.15, tau: float | None = None,
           logit_scale: ScaleLike | None = None) -> Tensor:
    """Hard-negative NCE (Radenovic et al. 2023), ``L_v2t(beta1) + L_t2v(beta2)``.

    ``L_v2t = mean_i[-s_ii + log(alpha exp(s_ii) + sum_{j != i} w_ij exp(s_ij))]`` with the
    weights of :func:`hard_negative_weights`; ``L_t2v`` is the same on the transposed matrix.
    """
    alpha, beta1, beta2 = float(alpha), float(beta1), float(beta2)
    _check_alpha_beta(alpha, beta1, beta2)
    sim = _similarity(img, txt, tau, logit_scale)
    return _hn_nce_direction(sim, alpha, beta1) + _hn_nce_direction(sim.T, alpha, beta2)


def dhn_nce(img: Tensor, txt: Tensor, *, beta1: float = 0.15, beta2: float = 0.15,
            tau: float | None = None, logit_scale: ScaleLike | None = None) -> Tensor:
    """Decoupled hard-negative NCE (the MedCLIP-SAM loss): :func:`hn_nce` with ``alpha = 0``."""
    return hn_nce(img, txt, alpha=0.0, beta1=beta1, beta2=beta2, tau=tau,
                  logit_scale=logit_scale)


LOSSES: dict[str, Callable[..., Tensor]] = {
    "infonce": info_nce,
    "dcl": dcl,
    "hn_nce": hn_nce,
    "dhn_nce": dhn_nce,
}


class ContrastiveLoss(nn.Module):
    """One of :data:`LOSSES` with its hyperparameters fixed (paper defaults: tau 0.6, beta 0.15).

    With ``tau`` set (default 0.6) the temperature is fixed; build it with ``tau=None`` and pass
    ``logit_scale`` (exponentiated, e.g. ``model.logit_scale.exp()``) to ``forward`` to use a
    model's learned scale instead. ``beta1``/``beta2`` apply to the hard-negative losses and
    ``alpha`` to ``hn_nce`` only; the other losses ignore them.
    """

    def __init__(self, kind: str = "dhn_nce", tau: float | None = 0.6, beta1: float = 0.15,
                 beta2: float = 0.15, alpha: float = 1.0) -> None:
        super().__init__()
        if kind not in LOSSES:
            raise ValueError(f"unknown contrastive loss {kind!r}; choose one of {sorted(LOSSES)}")
        if tau is not None:
            _scale(tau, None, torch.float32, torch.device("cpu"))  # validates tau
        _check_alpha_beta(float(alpha), float(beta1), float(beta2))
        self.kind = kind
        self.tau = tau
        self.beta1 = float(beta1)
        self.beta2 = float(beta2)
        self.alpha = float(alpha)

    def forward(self, img: Tensor, txt: Tensor, logit_scale: ScaleLike | None = None) -> Tensor:
        if self.tau is not None and logit_scale is not None:
            raise ValueError(
                f"this ContrastiveLoss has a fixed tau={self.tau}; build it with tau=None to use "
                "the model's logit_scale instead"
            )
        if self.tau is None and logit_scale is None:
            raise ValueError("this ContrastiveLoss was built with tau=None: pass logit_scale")
        kw: dict = {"tau": self.tau, "logit_scale": logit_scale}
        if self.kind in ("hn_nce", "dhn_nce"):
            kw.update(beta1=self.beta1, beta2=self.beta2)
        if self.kind == "hn_nce":
            kw["alpha"] = self.alpha
        return LOSSES[self.kind](img, txt, **kw)

    def extra_repr(self) -> str:
        parts = [f"kind={self.kind!r}", f"tau={self.tau}"]
        if self.kind in ("hn_nce", "dhn_nce"):
            parts += [f"beta1={self.beta1}", f"beta2={self.beta2}"]
        if self.kind == "hn_nce":
            parts.append(f"alpha={self.alpha}")
        return ", ".join(parts)
