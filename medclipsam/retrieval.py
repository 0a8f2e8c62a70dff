"""Image-text retrieval metrics: top-k accuracy in both directions, and the paper's protocol.

MedCLIP-SAM evaluates retrieval on ROCO in shuffled batches of 50 pairs, top-1 and top-2, image to
text and text to image, over several runs (mean and spread). :func:`retrieval_protocol` does that
for any embeddings; :func:`topk_accuracy` is one batch; :func:`protocol_hits` keeps the protocol's
outcome per query, for paired comparisons of two models on the same queries.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["protocol_hits", "retrieval_protocol", "topk_accuracy", "topk_hits"]


def topk_accuracy(
    image_emb: torch.Tensor, text_emb: torch.Tensor, ks: Sequence[int] = (1, 2),
    groups: Sequence | None = None,
) -> dict[str, float]:
    """Top-k retrieval accuracy (%) of matched pairs ``(image_emb[i], text_emb[i])``.

    ``groups`` (optional, one per pair, e.g. the caption string) makes a retrieved item count as
    correct when it belongs to the same group as the true one: two images with the identical
    caption are then not each other's errors. The embeddings may live on any device (all the
    work stays there; only the final numbers come back).
    """
    img = torch.nn.functional.normalize(image_emb.float(), dim=-1)
    txt = torch.nn.functional.normalize(text_emb.float(), dim=-1)
    sim = img @ txt.t()
    same = _same_group(sim.shape[0], groups, sim.device)
    out = {}
    for k in ks:
        i2t, t2i = topk_hits(sim, same, k)
        out[f"i2t_top{k}"] = 100.0 * float(i2t.float().mean())
        out[f"t2i_top{k}"] = 100.0 * float(t2i.float().mean())
    return out


def _same_group(n: int, groups: Sequence | None, device: torch.device) -> torch.Tensor:
    """(n, n) bool: pair j counts as a right answer for pair i (the diagonal, or same group)."""
    if groups is None:
        return torch.eye(n, dtype=torch.bool, device=device)
    g = list(groups)
    if len(g) != n:
        raise ValueError(f"{n} pairs but {len(g)} groups")
    return torch.tensor([[a == b for b in g] for a in g], dtype=torch.bool).to(device)


def topk_hits(sim: torch.Tensor, same: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pair, whether a right answer is among the top ``k`` (image to text, text to image).

    ``sim``: (n, n) image-text similarities; ``same``: (n, n) bool right answers (on ``sim``'s
    device). Returns two (n,) bool tensors on ``sim``'s device.
    """
    n = sim.shape[0]
    k_eff = min(int(k), n)
    rows = torch.arange(n, device=sim.device)[:, None]
    i2t = sim.topk(k_eff, dim=1).indices
    t2i = sim.t().topk(k_eff, dim=1).indices
    return same[rows, i2t].any(1), same[rows, t2i].any(1)


def retrieval_protocol(
    image_emb: torch.Tensor, text_emb: torch.Tensor, *, batch: int = 50, runs: int = 5, seed: int = 0,
    ks: Sequence[int] = (1, 2), groups: Sequence | None = None,
) -> dict[str, tuple[float, float]]:
    """The paper's protocol: shuffle, cut into batches of ``batch`` pairs (the short last batch is
    dropped), average :func:`topk_accuracy` over batches; repeat ``runs`` times with different
    shuffles and return ``{metric: (mean, std over runs)}``."""
    n = image_emb.shape[0]
    if n < batch:
        raise ValueError(f"retrieval_protocol needs at least batch={batch} pairs, got {n}")
    rng = np.random.default_rng(seed)
    per_run: dict[str, list[float]] = {}
    for _ in range(runs):
        order = rng.permutation(n)
        acc: dict[str, list[float]] = {}
        for b in range(n // batch):
            idx = order[b * batch : (b + 1) * batch]
            g = None if groups is None else [groups[i] for i in idx]
            for key, v in topk_accuracy(image_emb[idx], text_emb[idx], ks, g).items():
                acc.setdefault(key, []).append(v)
        for key, vals in acc.items():
            per_run.setdefault(key, []).append(float(np.mean(vals)))
    return {key: (float(np.mean(v)), float(np.std(v))) for key, v in per_run.items()}


def protocol_hits(
    image_emb: torch.Tensor, text_emb: torch.Tensor, captions: Sequence[str], *, batch: int = 50,
    runs: int = 5, seed: int = 0, top: int = 1,
) -> np.ndarray:
    """The paper's protocol kept per query: for each image (the first ``n`` entries) and each
    caption (the last ``n``), the share of the ``runs`` shuffles in which its match is among the
    top ``top`` of its batch of ``batch`` (identical captions count as matches). Two models embedded
    on the same pairs give two arrays to compare query by query
    (:func:`medclipsam.metrics.paired_difference`); the mean over the first ``n`` is
    :func:`retrieval_protocol`'s image-to-text number (queries in a dropped short batch excluded)."""
    n = image_emb.shape[0]
    if n < batch:
        raise ValueError(f"protocol_hits needs at least batch={batch} pairs, got {n}")
    hits, counts = np.zeros(2 * n), np.zeros(2 * n)
    rng = np.random.default_rng(seed)
    for _ in range(runs):
        order = rng.permutation(n)
        for b in range(n // batch):
            idx = order[b * batch:(b + 1) * batch]
            caps = [captions[i] for i in idx]
            same = torch.tensor([[x == y for y in caps] for x in caps])
            i2t, t2i = topk_hits(image_emb[idx] @ text_emb[idx].T, same, top)
            hits[idx] += i2t.float().cpu().numpy()
            hits[n + idx] += t2i.float().cpu().numpy()
            counts[idx] += 1
            counts[n + idx] += 1
    keep = counts > 0
    return hits[keep] / counts[keep]
