"""Exercise 2: the steps of gScoreCAM, checked one by one and chained on the toy CLIP.

The student writes four small functions (signatures as in :mod:`.reference`):

* ``select_channels(grads [B, C, h, w], k) -> [B, k]``: top-k channels by the spatial mean of the
  signed gradient, largest first (k larger than C keeps all C);
* ``channel_masks(act [B, C, h, w], channels [B, k], size) -> [B, k, H, W]``: each kept channel
  upsampled (bilinear, ``align_corners=False``) and min-max normalised to [0, 1];
* ``gscorecam_weights(cosines [B, k], logit_scale) -> [B, k]``: softmax of the logits
  ``logit_scale * cosine`` over the k channels;
* ``combine_maps(act, channels, weights, size) -> [B, H, W]``: ``ReLU(sum_j w_j A_{c_j})``,
  upsampled and min-max normalised.

:func:`gscorecam_with` runs gScoreCAM on a real model with any of those replaced by the student's;
with the reference steps it reproduces :func:`medclipsam.saliency.gscorecam.gscorecam` (tested).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..data.phantom import PROMPTS, TASKS, PhantomDataset
from ..models import load_clip
from ..saliency.cam import (
    exp_logit_scale,
    layer_activations_and_gradients,
    normalize_maps,
    normalized_text,
    resolve_target,
)
from ..saliency.gscorecam import gscorecam, masked_image_features
from . import reference
from ._core import Case, CheckResult, compare_arrays, run_check, same_values, seeds, to_numpy

__all__ = [
    "check_channel_masks",
    "check_channel_selection",
    "check_combine_maps",
    "check_gscorecam_map",
    "check_gscorecam_weights",
    "gscorecam_with",
    "layer_activations",
]


def _as_tensor(x: Any, what: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, (np.ndarray, list, tuple)):
        return torch.as_tensor(np.asarray(x))
    raise TypeError(f"returned a {type(x).__name__}; return a torch tensor of {what}")


# -- 2a: channel selection -------------------------------------------------------------------------


def _grads_case(
    label: str, b: int, c: int, h: int, w: int, k: int, g: torch.Generator, ties: bool = False
) -> Case:
    if ties:
        # per-channel means drawn from a few integers: many exact ties, signs mixed
        means = torch.randint(-3, 4, (b, c), generator=g).double()
        grads = means[:, :, None, None].expand(b, c, h, w).clone()
    else:
        scale = torch.rand(b, c, 1, 1, generator=g) * 3
        grads = torch.randn(b, c, h, w, generator=g) * scale
        # strong negative channels: large |gradient|, low importance (the abs-sort trap)
        neg = torch.randperm(c, generator=g)[: max(1, c // 4)]
        grads[:, neg] -= 4.0 + torch.rand(b, len(neg), 1, 1, generator=g) * 4
        grads = grads.float()
    return Case(f"{label}; grads [B={b}, C={c}, h={h}, w={w}], k={k}", (grads, k))


def _selection_cases(n_trials: int, seed: int) -> list[Case]:
    g = torch.Generator().manual_seed(seed)
    cases = [
        _grads_case("batch of one image", 1, 8, 3, 3, 3, g),
        _grads_case("tied importances", 2, 12, 2, 3, 5, g, ties=True),
        _grads_case("k larger than C (keep all C)", 1, 6, 2, 2, 10, g),
    ]
    for s in seeds(seed, n_trials):
        r = np.random.default_rng(s)
        c = int(r.integers(4, 65))
        cases.append(
            _grads_case(
                f"random (seed {s})",
                int(r.integers(1, 4)),
                c,
                int(r.integers(1, 8)),
                int(r.integers(1, 8)),
                int(r.integers(1, c + 1)),
                torch.Generator().manual_seed(s),
            )
        )
    return cases


def _run_selection(fn: Callable, case: Case, args: tuple, kwargs: dict) -> Any:
    return fn(*args, **kwargs)


def _compare_selection(expected: torch.Tensor, got: Any, case: Case) -> str | None:
    grads, k = case.args
    b, c = grads.shape[:2]
    try:
        t = _as_tensor(got, "channel indices")
    except TypeError as e:
        return str(e)
    if tuple(t.shape) != tuple(expected.shape):
        extra = ""
        if k > c and t.ndim == 2 and t.shape[1] == k:
            extra = " (k is larger than C: keep all C channels)"
        return (
            f"wrong shape: expected [B, min(k, C)] = {tuple(expected.shape)}, got "
            f"{tuple(t.shape)}{extra}"
        )
    if t.is_floating_point() or t.dtype == torch.bool:
        return f"channel indices must be integers (torch.long), got dtype {t.dtype}"
    t = t.long()
    if (t < 0).any() or (t >= c).any():
        return f"channel indices must lie in 0..{c - 1}; got values {int(t.min())}..{int(t.max())}"
    for row in range(b):
        if len(set(t[row].tolist())) != t.shape[1]:
            return f"image {row}: the same channel is chosen twice: {t[row].tolist()}"
    imp = grads.double().mean(dim=(2, 3))
    want, have = imp.gather(1, expected), imp.gather(1, t)
    if torch.allclose(have, want, rtol=1e-6, atol=1e-9):
        return None
    row = int((~torch.isclose(have, want, rtol=1e-6, atol=1e-9)).any(1).nonzero()[0])
    return (
        "wrong channels or order"
        + (f" for image {row}" if b > 1 else "")
        + f":\n    expected channels {expected[row].tolist()} (importance "
        f"{np.round(want[row].numpy(), 3).tolist()})\n    got channels      {t[row].tolist()} "
        f"(importance {np.round(have[row].numpy(), 3).tolist()})"
    )


def _diagnose_selection(got: Any, case: Case, expected: torch.Tensor) -> str | None:
    grads, k = case.args
    t = _as_tensor(got, "").long()
    imp = grads.double().mean(dim=(2, 3))
    kk = min(k, grads.shape[1])
    if t.shape != expected.shape:
        return None
    have, want = imp.gather(1, t), imp.gather(1, expected)

    def picks(order: torch.Tensor, score: torch.Tensor) -> bool:
        """The student's channels rank like ``order`` under ``score`` (ties in any order),
        and that ranking is not the right one."""
        return torch.allclose(score.gather(1, t), score.gather(1, order)) and not torch.allclose(
            imp.gather(1, order), want
        )

    if picks(imp.abs().topk(kk, dim=1).indices, imp.abs()):
        return (
            "your channels are the top k by ABSOLUTE mean gradient. gScoreCAM keeps the "
            "channels whose activation RAISES the image-text score: sort by the signed mean "
            "gradient (a large negative gradient means the channel lowers the score)."
        )
    if picks(imp.topk(kk, dim=1, largest=False).indices, imp):
        return "you kept the k SMALLEST importances; keep the largest (topk(..., largest=True))."
    if torch.allclose(have.sort(dim=1, descending=True).values, want):
        return (
            "the right channels, in the wrong order: return them largest importance first "
            "(as torch.topk does), not sorted by channel number."
        )
    mx = grads.double().amax(dim=(2, 3))
    if picks(mx.topk(kk, dim=1).indices, mx):
        return (
            "you ranked channels by their MAXIMUM gradient; the importance is the spatial "
            "MEAN of the gradient over the h x w grid: grads.mean(dim=(2, 3))."
        )
    return None


def check_channel_selection(
    student_fn: Callable[[torch.Tensor, int], torch.Tensor],
    *,
    n_trials: int = 10,
    seed: int = 0,
    strict: bool = False,
    verbose: bool = True,
) -> CheckResult:
    """Compare ``student_fn(grads [B, C, h, w], k) -> [B, min(k, C)]`` with the top-k by signed
    mean gradient. Tied channels may come in any order (the importances are compared)."""
    return run_check(
        "check_channel_selection",
        student_fn,
        _selection_cases(n_trials, seed),
        run=_run_selection,
        reference=reference.select_channels,
        compare=_compare_selection,
        diagnose=_diagnose_selection,
        error_hint=_selection_error_hint,
        strict=strict,
        verbose=verbose,
        success="random and edge cases: batches of 1 to 3, ties, k > C, strongly negative channels",
    )


def _selection_error_hint(error: BaseException, case: Case) -> str | None:
    grads, k = case.args
    if k > grads.shape[1]:
        return (
            f"k = {k} is larger than the number of channels C = {grads.shape[1]} (torch.topk "
            "refuses that): keep all C channels, k = min(k, C)."
        )
    return None


# -- 2b: channel masks -----------------------------------------------------------------------------


def _act_case(
    label: str,
    b: int,
    c: int,
    h: int,
    w: int,
    k: int,
    size: tuple[int, int],
    g: torch.Generator,
    constant: bool = False,
) -> Case:
    act = torch.randn(b, c, h, w, generator=g) * 2 + 0.5
    channels = torch.stack([torch.randperm(c, generator=g)[:k] for _ in range(b)])
    if constant:
        act[0, int(channels[0, 0])] = 1.5  # a flat channel: its mask must be zeros, not NaN
    return Case(
        f"{label}; act [B={b}, C={c}, h={h}, w={w}], k={k}, size={size}", (act, channels, size)
    )


def _mask_cases(n_trials: int, seed: int) -> list[Case]:
    g = torch.Generator().manual_seed(seed)
    cases = [
        _act_case("batch of one, square", 1, 6, 4, 4, 2, (16, 16), g),
        _act_case("a constant channel", 2, 5, 3, 3, 3, (12, 12), g, constant=True),
    ]
    for s in seeds(seed, n_trials):
        r = np.random.default_rng(s)
        c = int(r.integers(3, 20))
        h, w = int(r.integers(2, 8)), int(r.integers(2, 8))
        size = (int(r.integers(8, 41)), int(r.integers(8, 41)))
        cases.append(
            _act_case(
                f"random (seed {s})",
                int(r.integers(1, 4)),
                c,
                h,
                w,
                int(r.integers(1, min(c, 6) + 1)),
                size,
                torch.Generator().manual_seed(s),
            )
        )
    return cases


def _gather(act: torch.Tensor, channels: torch.Tensor) -> torch.Tensor:
    _, _, h, w = act.shape
    return act.gather(1, channels[:, :, None, None].expand(-1, -1, h, w))


def _norm_bk(x: torch.Tensor) -> torch.Tensor:
    b, k, h, w = x.shape
    return normalize_maps(x.reshape(b * k, h, w)).reshape(b, k, h, w)


def _mask_variants(
    act: torch.Tensor, channels: torch.Tensor, size
) -> list[tuple[str, torch.Tensor]]:
    kept = _gather(act, channels).float()
    size = tuple(size)

    def up(x, **kw):
        return F.interpolate(x, size=size, **kw)

    bil = up(kept, mode="bilinear", align_corners=False)
    return [
        (
            "the masks are not normalised: after upsampling, min-max normalise each mask to [0, 1] "
            "((m - min) / (max - min)); the masked image is image * mask.",
            bil,
        ),
        (
            "each mask is divided by its maximum only; min-max normalise: (m - min) / (max - min).",
            bil / bil.amax(dim=(2, 3), keepdim=True),
        ),
        (
            "align_corners=True; the package uses half-pixel centres: F.interpolate(..., "
            "mode='bilinear', align_corners=False).",
            _norm_bk(up(kept, mode="bilinear", align_corners=True)),
        ),
        (
            "nearest-neighbour upsampling; use mode='bilinear' (align_corners=False).",
            _norm_bk(up(kept, mode="nearest")),
        ),
        (
            "you normalised before upsampling; upsample first, then min-max normalise (the "
            "upsampled map's extremes are not the grid's).",
            up(_norm_bk(kept), mode="bilinear", align_corners=False),
        ),
        (
            "size was read as (W, H); size is (H, W), as F.interpolate takes it.",
            _norm_bk(F.interpolate(kept, size=size[::-1], mode="bilinear", align_corners=False)),
        ),
        (
            "every image got the first image's channels; channels[b] are image b's own.",
            _norm_bk(
                up(
                    _gather(act, channels[:1].expand_as(channels)).float(),
                    mode="bilinear",
                    align_corners=False,
                )
            ),
        ),
    ]


def _compare_maps(expected: torch.Tensor, got: Any, case: Case, what: str) -> str | None:
    try:
        t = _as_tensor(got, what)
    except TypeError as e:
        return str(e)
    return compare_arrays(expected, t.float(), rtol=1e-4, atol=1e-4, what=what)


def _tensor_matches(rtol: float, atol: float) -> Callable[[Any, Any, Case], bool | None]:
    """``matches`` for tensors: None for an output that is no tensor or has NaN/inf."""

    def matches(output: Any, variant: torch.Tensor, case: Case) -> bool | None:
        try:
            t = _as_tensor(output, "")
        except TypeError:
            return None
        if t.is_floating_point() and not torch.isfinite(t).all():
            return None
        return same_values(t, variant, rtol=rtol, atol=atol)

    return matches


def _diagnose_nan(got: Any, case: Case, expected: torch.Tensor) -> str | None:
    """The hint that is no wrong formula: NaN from a constant channel (0 / 0)."""
    t = _as_tensor(got, "")
    if t.is_floating_point() and not torch.isfinite(t).all():
        return (
            "NaN values: a constant channel (max = min) divides by zero. Give such a "
            "channel an all-zero mask, e.g. torch.where(max - min > 1e-8, (m - min) / "
            "(max - min), 0)."
        )
    return None


def check_channel_masks(
    student_fn: Callable[..., torch.Tensor],
    *,
    n_trials: int = 8,
    seed: int = 0,
    strict: bool = False,
    verbose: bool = True,
) -> CheckResult:
    """Compare ``student_fn(act [B, C, h, w], channels [B, k], size (H, W)) -> [B, k, H, W]``
    with the package's masks (bilinear upsampling with ``align_corners=False``, per-mask min-max
    normalisation, a constant channel giving zeros)."""
    return run_check(
        "check_channel_masks",
        student_fn,
        _mask_cases(n_trials, seed),
        run=lambda fn, case, a, k: fn(*a, **k),
        reference=reference.channel_masks,
        compare=lambda e, g, c: _compare_maps(e, g, c, "masks"),
        mistakes=lambda c: _mask_variants(*c.args),
        matches=_tensor_matches(1e-4, 1e-4),
        diagnose=_diagnose_nan,
        strict=strict,
        verbose=verbose,
        success="random and edge cases: non-square sizes, batches of 1 to 3, a constant channel",
    )


# -- 2c: weights -----------------------------------------------------------------------------------


def _weight_cases(n_trials: int, seed: int) -> list[Case]:
    g = torch.Generator().manual_seed(seed)
    cases = [
        Case("one image, one channel", (torch.rand(1, 1, generator=g) * 0.5, 14.0)),
        Case(
            "BiomedCLIP's logit scale 100 with cosines near 1 (large logits)",
            (0.9 + 0.1 * torch.rand(2, 6, generator=g), 100.0),
        ),
    ]
    for s in seeds(seed, n_trials):
        r = np.random.default_rng(s)
        b, k = int(r.integers(1, 4)), int(r.integers(2, 33))
        tg = torch.Generator().manual_seed(s)
        cos = (torch.rand(b, k, generator=tg) * 0.8 - 0.4).float()
        scale = float(r.choice([10.0, 14.0, 30.0, 100.0]))
        cases.append(
            Case(f"random (seed {s}); cosines [B={b}, k={k}], logit_scale={scale:g}", (cos, scale))
        )
    return cases


def _weight_variants(cos: torch.Tensor, scale: float) -> list[tuple[str, torch.Tensor]]:
    logits = scale * cos.double()
    return [
        (
            "no softmax: the weights are a softmax of the scores over the k channels, "
            "torch.softmax(logit_scale * cosines, dim=-1).",
            logits,
        ),
        (
            "the scores are divided by their sum instead of a softmax; use torch.softmax (the "
            "exponential keeps every weight positive).",
            logits / logits.sum(-1, keepdim=True),
        ),
        (
            "wrong temperature: the softmax must be over the LOGITS logit_scale * cosine (what "
            "CLIP scores), not the raw cosines.",
            torch.softmax(cos.double(), -1),
        ),
        (
            "wrong temperature: multiply the cosines by logit_scale, do not divide.",
            torch.softmax(cos.double() / scale, -1),
        ),
        (
            "the softmax runs over the batch (dim=0); it is over each image's k channels (dim=-1).",
            torch.softmax(logits, 0),
        ),
    ]


def _diagnose_weights(got: Any, case: Case, expected: torch.Tensor) -> str | None:
    """The hint that is no wrong formula: an overflow."""
    t = _as_tensor(got, "")
    if t.is_floating_point() and not torch.isfinite(t).all():
        return (
            "NaN or inf: exp(100) overflows float32. Use torch.softmax, which subtracts each "
            "row's maximum before exponentiating."
        )
    return None


def check_gscorecam_weights(
    student_fn: Callable[[torch.Tensor, float], torch.Tensor],
    *,
    n_trials: int = 8,
    seed: int = 0,
    strict: bool = False,
    verbose: bool = True,
) -> CheckResult:
    """Compare ``student_fn(cosines [B, k], logit_scale) -> [B, k]`` with
    ``softmax(logit_scale * cosines)`` over the k channels (gScoreCAM's ``"selected"``
    weighting; ``logit_scale`` is the model's exponentiated scale)."""
    return run_check(
        "check_gscorecam_weights",
        student_fn,
        _weight_cases(n_trials, seed),
        run=lambda fn, case, a, k: fn(*a, **k),
        reference=reference.gscorecam_weights,
        compare=lambda e, g, c: _compare_maps(e, g, c, "weights"),
        mistakes=lambda c: _weight_variants(*c.args),
        matches=_tensor_matches(1e-4, 1e-6),
        diagnose=_diagnose_weights,
        strict=strict,
        verbose=verbose,
        success="random and edge cases: one channel, large logits, batches of 1 to 3",
    )


# -- 2d: combining ---------------------------------------------------------------------------------


def _combine_case(
    label: str,
    b: int,
    c: int,
    h: int,
    w: int,
    k: int,
    size,
    g: torch.Generator,
    negative: bool = False,
) -> Case:
    act = torch.randn(b, c, h, w, generator=g)
    if negative:
        act = -act.abs() - 0.1  # every weighted sum is negative: ReLU leaves nothing
    channels = torch.stack([torch.randperm(c, generator=g)[:k] for _ in range(b)])
    weights = torch.softmax(torch.randn(b, k, generator=g) * 2, -1)
    return Case(
        f"{label}; act [B={b}, C={c}, h={h}, w={w}], k={k}, size={size}",
        (act, channels, weights, size),
    )


def _combine_cases(n_trials: int, seed: int) -> list[Case]:
    g = torch.Generator().manual_seed(seed)
    cases = [
        _combine_case("batch of one", 1, 6, 4, 4, 3, (16, 16), g),
        _combine_case(
            "all activations negative (the map must be zeros, not NaN)",
            1,
            5,
            3,
            3,
            2,
            (9, 12),
            g,
            negative=True,
        ),
    ]
    for s in seeds(seed, n_trials):
        r = np.random.default_rng(s)
        c = int(r.integers(3, 20))
        cases.append(
            _combine_case(
                f"random (seed {s})",
                int(r.integers(1, 4)),
                c,
                int(r.integers(2, 8)),
                int(r.integers(2, 8)),
                int(r.integers(1, min(c, 6) + 1)),
                (int(r.integers(8, 41)), int(r.integers(8, 41))),
                torch.Generator().manual_seed(s),
            )
        )
    return cases


def _combine_variants(act, channels, weights, size) -> list[tuple[str, torch.Tensor]]:
    size = tuple(size)
    cam = (weights[:, :, None, None] * _gather(act, channels)).sum(1)[:, None]

    def up(x, **kw):
        return F.interpolate(x, size=size, **kw)[:, 0]

    return [
        (
            "no ReLU: negative evidence is cut off before upsampling, map = ReLU(sum_j w_j A_j).",
            normalize_maps(up(cam, mode="bilinear", align_corners=False)),
        ),
        (
            "the map is not min-max normalised to [0, 1] at the end.",
            up(F.relu(cam), mode="bilinear", align_corners=False),
        ),
        (
            "ReLU after upsampling; apply it to the low-resolution sum, then upsample, then "
            "normalise.",
            normalize_maps(F.relu(up(cam, mode="bilinear", align_corners=False))),
        ),
        (
            "abs() instead of ReLU: negative evidence is dropped, not counted as positive.",
            normalize_maps(up(cam.abs(), mode="bilinear", align_corners=False)),
        ),
        (
            "align_corners=True; use F.interpolate(..., mode='bilinear', align_corners=False).",
            normalize_maps(up(F.relu(cam), mode="bilinear", align_corners=True)),
        ),
        (
            "nearest-neighbour upsampling; use mode='bilinear' (align_corners=False).",
            normalize_maps(up(F.relu(cam), mode="nearest")),
        ),
        (
            "the weights are ignored (a plain sum of the kept channels).",
            normalize_maps(
                up(
                    F.relu(_gather(act, channels).sum(1)[:, None]),
                    mode="bilinear",
                    align_corners=False,
                )
            ),
        ),
    ]


def check_combine_maps(
    student_fn: Callable[..., torch.Tensor],
    *,
    n_trials: int = 8,
    seed: int = 0,
    strict: bool = False,
    verbose: bool = True,
) -> CheckResult:
    """Compare ``student_fn(act [B, C, h, w], channels [B, k], weights [B, k], size) -> [B, H, W]``
    with ``normalise(upsample(ReLU(sum_j w_j A_{c_j})))``."""
    return run_check(
        "check_combine_maps",
        student_fn,
        _combine_cases(n_trials, seed),
        run=lambda fn, case, a, k: fn(*a, **k),
        reference=reference.combine_maps,
        compare=lambda e, g, c: _compare_maps(e, g, c, "maps"),
        mistakes=lambda c: _combine_variants(*c.args),
        matches=_tensor_matches(1e-4, 1e-4),
        diagnose=_diagnose_nan,
        strict=strict,
        verbose=verbose,
        success="random and edge cases: non-square sizes, batches of 1 to 3, an all-negative map",
    )


# -- the whole method on a real model --------------------------------------------------------------


def _cosines(
    model: torch.nn.Module,
    images: torch.Tensor,
    masks: torch.Tensor,
    txt: torch.Tensor,
    batch_size: int,
) -> torch.Tensor:
    """cos(image_b * mask_bj, text_b) for every image b and kept channel j: ``[B, k]``, scored by
    the package's :func:`~medclipsam.saliency.gscorecam.masked_image_features` with the masks
    ``[B, k, H, W]`` given (so they are used as they are)."""
    b, k = masks.shape[:2]
    image_idx = torch.arange(b, device=images.device).repeat_interleave(k)
    mask_idx = torch.arange(k, device=images.device).repeat(b)
    feats = masked_image_features(
        model.encode_image, images, masks.to(images.device), image_idx, mask_idx,
        batch_size=batch_size, masks=lambda given, _size: given,
    )
    return (feats.view(b, k, -1) * txt[:, None]).sum(-1).cpu()


def layer_activations(
    model: torch.nn.Module, images: torch.Tensor, text_features: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """What gScoreCAM starts from: the hooked layer's activations ``A [B, C, h, w]``, the
    gradients ``dlogit/dA [B, C, h, w]`` of each image's image-text logit, and the model's
    (exponentiated) logit scale. The layer is the package's default
    (:func:`medclipsam.saliency.cam.resolve_target`)."""
    txt = normalized_text(text_features, images.shape[0], images.device)
    act, grads = layer_activations_and_gradients(model, images, txt, resolve_target(model, None))
    return act, grads, exp_logit_scale(model)


def gscorecam_with(
    model: torch.nn.Module,
    images: torch.Tensor,
    text_features: torch.Tensor,
    *,
    k: int = 24,
    select_channels: Callable | None = None,
    channel_masks: Callable | None = None,
    gscorecam_weights: Callable | None = None,
    combine_maps: Callable | None = None,
    batch_size: int = 32,
) -> torch.Tensor:
    """gScoreCAM maps ``[B, H, W]`` of preprocessed ``images [B, 3, H, W]`` for ``text_features``
    (``[B, D]`` or ``[1, D]``), with any step replaced by your own function (None: the reference).

    The forward/backward pass (:func:`layer_activations`) and the scoring of the masked images
    (``cos(encode_image(image * mask), text)``) are the package's, in float32; with every step
    None the result equals ``gscorecam(model, images, text_features, k=k)``.
    """
    select = select_channels or reference.select_channels
    masks_fn = channel_masks or reference.channel_masks
    weights_fn = gscorecam_weights or reference.gscorecam_weights
    combine = combine_maps or reference.combine_maps
    act, grads, scale = layer_activations(model, images, text_features)
    txt = normalized_text(text_features, images.shape[0], images.device)
    size = tuple(images.shape[-2:])
    channels = torch.as_tensor(select(grads.clone(), k)).long()
    masks = torch.as_tensor(masks_fn(act.clone(), channels.clone(), size)).float()
    cos = _cosines(model, images.detach(), masks, txt, batch_size)
    weights = torch.as_tensor(weights_fn(cos.clone(), scale)).float()
    return torch.as_tensor(combine(act.clone(), channels.clone(), weights, size)).float()


def check_gscorecam_map(
    select_channels: Callable | None = None,
    channel_masks: Callable | None = None,
    gscorecam_weights: Callable | None = None,
    combine_maps: Callable | None = None,
    *,
    k: int = 24,
    n_images: int = 2,
    seed: int = 0,
    clip: Any = None,
    strict: bool = False,
    verbose: bool = True,
) -> CheckResult:
    """Chain your steps on the toy CLIP and compare the maps with the package's ``gscorecam`` on
    ``n_images`` phantom images (one per task in turn). ``clip``: a loaded
    :class:`~medclipsam.models.clip.ClipBundle` (default: ``load_clip("toy")``)."""
    clip = clip or load_clip("toy")
    cases = []
    for i in range(n_images):
        task = TASKS[i % len(TASKS)]
        sample = PhantomDataset(
            task, n_images, seed=seed, size=128, split="test", normal_fraction=0.0
        )[i]
        x, _ = clip.prepare(sample.rgb)
        with torch.no_grad():
            txt = clip.encode_text([PROMPTS[task]], normalize=False).float()
        cases.append(
            Case(
                f"toy CLIP, {task} phantom {i} (seed {seed}), prompt {PROMPTS[task]!r}, k={k}",
                (x[None], txt),
            )
        )
    steps = {
        "select_channels": select_channels,
        "channel_masks": channel_masks,
        "gscorecam_weights": gscorecam_weights,
        "combine_maps": combine_maps,
    }
    mine = {name: fn for name, fn in steps.items() if fn is not None}

    def run(fn: Callable, case: Case, args: tuple, kwargs: dict) -> Any:
        return fn(*args)

    def reference_maps(x: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
        return gscorecam(clip.model, x, txt, k=k)

    def student_maps(x: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
        return gscorecam_with(clip.model, x, txt, k=k, **mine)

    def compare(expected: torch.Tensor, got: torch.Tensor, case: Case) -> str | None:
        d = compare_arrays(expected, got, rtol=1e-3, atol=1e-3, what="map")
        if d is None:
            return None
        e, g_ = to_numpy(expected)[0], to_numpy(got)[0]
        ye, xe = np.unravel_index(int(np.argmax(e)), e.shape)
        yg, xg = np.unravel_index(int(np.argmax(g_)), g_.shape)
        return d + (
            f"\n    the package's map peaks at (x={xe}, y={ye}), yours at (x={xg}, y={yg}); "
            "run the per-step checks above to find the step that differs"
        )

    return run_check(
        "check_gscorecam_map",
        student_maps,
        cases,
        run=run,
        reference=reference_maps,
        compare=compare,
        strict=strict,
        verbose=verbose,
        graded=list(mine.values()),
        success=(f"your {', '.join(mine)} chained" if mine else "the reference steps chained")
        + " on the toy CLIP give the package's gScoreCAM maps",
    )
