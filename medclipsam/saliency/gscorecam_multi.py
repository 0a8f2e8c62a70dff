"""gScoreCAM for several prompts on one image, sharing the masked images between them.

A speed-up built on the steps of :mod:`medclipsam.saliency.gscorecam`; a student can skip it.
A masked image ``image * mask(A_c)`` depends on the image and the channel c, never on the prompt,
so P prompts score the union of their k-channel sets once (at most ``min(C, P*k)`` forwards
instead of ``P*k``), and a :class:`MaskedFeatureStore` kept by the caller carries those features to
later calls on the same image. Each map equals :func:`~medclipsam.saliency.gscorecam.gscorecam` of
that prompt.
"""

from __future__ import annotations

import torch

from ..config import PAPER_K
from .cam import (
    check_images,
    exp_logit_scale,
    gradients_per_logit,
    layer_outputs_and_logits,
    normalized_text,
    resolve_target,
)
from .gscorecam import (
    GScoreCamDetails,
    channel_importance,
    check_options,
    mask_maker,
    masked_image_features,
    pick_channels,
    weigh_and_combine,
)
from .gscorecam_fast import (
    default_batch_size,
    parameter_signature,
    scoring_dtype,
    scoring_encoder,
)
from .targets import TargetLayer

__all__ = ["MaskedFeatureStore", "gscorecam_multi"]


class MaskedFeatureStore:
    """The normalised features of one image's masked copies, by channel, kept across calls.

    A masked image ``image * mask(A_c)`` depends on the image, the channel c, the model, the
    target layer, the scoring dtype and the mask convention, never on the prompt. Pass one store
    to :func:`gscorecam_multi` (or ``store=`` through :func:`~medclipsam.saliency.saliency_maps`,
    the prompt-sensitivity check, the explorer) and a later call on the same image scores only the
    channels no earlier call scored. The store holds one image at a time: a call with another
    image, model (or changed weights), layer, dtype or convention empties it first.
    ``scored`` counts the masked images it had scored (for tests and benchmarks).
    """

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._image: torch.Tensor | None = None
        self.features: dict[int, torch.Tensor] = {}
        self.scored = 0

    def bind(self, model: torch.nn.Module, image: torch.Tensor, layer: str, dtype: torch.dtype,
             convention: str) -> None:
        """Keep the features if they are of this image and setting, else start empty."""
        key = (id(model), parameter_signature(model), layer, dtype, convention,
               tuple(image.shape), image.dtype, image.device)
        same = key == self._key and self._image is not None and torch.equal(self._image, image)
        if not same:
            self._key, self._image, self.features = key, image.detach().clone(), {}

    def missing(self, channels: torch.Tensor) -> torch.Tensor:
        """The channels of ``channels`` not scored yet."""
        keep = [i for i, c in enumerate(channels.tolist()) if c not in self.features]
        return channels[torch.tensor(keep, dtype=torch.long, device=channels.device)]

    def add(self, channels: torch.Tensor, feats: torch.Tensor) -> None:
        """Keep the features ``[N, D]`` of ``channels`` ``[N]``."""
        for c, f in zip(channels.tolist(), feats):
            self.features[c] = f
        self.scored += channels.numel()

    def get(self, channels: torch.Tensor) -> torch.Tensor:
        """Features ``[N, D]`` of ``channels`` (all scored)."""
        return torch.stack([self.features[c] for c in channels.tolist()])


def gscorecam_multi(
    model: torch.nn.Module,
    image: torch.Tensor,
    text_features: torch.Tensor,
    *,
    k: int | float | None = PAPER_K,
    batch_size: int | None = None,
    target: TargetLayer | str | None = None,
    weighting: str = "selected",
    precision: str = "fp32",
    convention: str = "package",
    store: MaskedFeatureStore | None = None,
    return_details: bool = False,
    pick: str = "gradient",
    pick_seed: int = 0,
) -> torch.Tensor | GScoreCamDetails:
    """gScoreCAM maps ``[P, H, W]`` of one image ``[1, 3, H, W]`` for P prompts ``[P, D]``.

    Shared across prompts: the image's forward pass (one, then one backward pass per prompt for
    the channel importances) and the scoring. A masked image depends on the channel, not on the
    prompt, so the union of the prompts' k-channel sets is scored once and each masked image's
    feature is compared with every prompt: at most ``min(C, P*k)`` forwards instead of ``P*k``
    (never more than looping over prompts). Each map equals
    :func:`~medclipsam.saliency.gscorecam.gscorecam` of that prompt, whose options these are.
    ``store``: a :class:`MaskedFeatureStore` kept by the caller across calls on the same image:
    only channels it does not hold yet are scored (a new prompt on an image already seen).
    """
    check_images(image)
    check_options(weighting, k, batch_size, convention, pick)
    if image.shape[0] != 1:
        raise ValueError(f"gscorecam_multi takes one image [1, 3, H, W], got {tuple(image.shape)}")
    target = resolve_target(model, target)
    device = image.device
    t = text_features.detach()
    t = t[None] if t.ndim == 1 else t
    p = t.shape[0]
    txt = normalized_text(t, p, device)

    act_raw, logits = layer_outputs_and_logits(model, image, txt, target)  # logits [P]
    grads = torch.cat([target.to_grid(g).float() for g in gradients_per_logit(logits, act_raw)])
    act1 = target.to_grid(act_raw.detach()).float().contiguous()  # [1, C, h, w]
    importance = channel_importance(grads)  # [P, C]
    if pick == "random":  # one draw for the image whatever the prompt, as gscorecam makes it
        channels = pick_channels(grads[:1], k, pick, pick_seed).expand(p, -1).contiguous()
    else:
        channels = pick_channels(grads, k, pick, pick_seed)  # [P, k]

    union = torch.unique(channels)  # sorted
    dtype = scoring_dtype(precision, device)
    if store is not None:
        store.bind(model, image, target.name, dtype, convention)
    todo = union if store is None else store.missing(union)
    feats_new = masked_image_features(
        scoring_encoder(model, dtype), image.detach(), act1, torch.zeros_like(todo), todo,
        batch_size=int(batch_size or default_batch_size(device)), masks=mask_maker(convention),
    )
    if store is not None:
        store.add(todo, feats_new)
        feats_masked = store.get(union)
    else:
        feats_masked = feats_new
    all_scores = exp_logit_scale(model) * feats_masked @ txt.T  # [U, P]
    pos = torch.searchsorted(union, channels)  # [P, k] rows of the union
    scores = all_scores.gather(0, pos.T).T  # scores[p, j] = all_scores[pos[p, j], p]
    act = act1.expand(p, -1, -1, -1)
    weights, maps = weigh_and_combine(act, channels, scores, weighting, image.shape[-2:])
    details = GScoreCamDetails(maps, importance, channels, scores, weights, target.name, dtype)
    return details if return_details else maps
