"""Stage 1's experiment: fine-tune one CLIP with each contrastive loss and compare retrieval.

The paper's Table (retrieval on ROCO, top-1/top-2 in both directions) sets BiomedCLIP beside the
same model fine-tuned with InfoNCE, DCL, HN-NCE and DHN-NCE. :func:`compare_losses` runs that
experiment for any CLIP and any pair data set: each loss starts from the *same* weights (a fresh
load), trains with the same settings and data order, and is scored on the same held-out pairs with
the paper's protocol (shuffled batches of 50, several runs). :data:`PAPER_RETRIEVAL` holds the
paper's numbers to print beside ours.

In the toy world (``clip="toy"``, :class:`~medclipsam.data.PhantomPairs`), one call is the lesson
of notebook 02 and of ``benchmarks/dhn_nce_toy.py``.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from .config import FinetuneConfig
from .finetune import finetune
from .models import load_clip
from .models.clip import trim_padding
from .retrieval import retrieval_protocol, topk_accuracy
from .vocab import LOSS_NAMES

__all__ = ["PAPER_RETRIEVAL", "compare_losses", "embed_pairs", "retrieval_scores"]

#: The losses in the order of the paper's table.

#: MedCLIP-SAM(v2)'s retrieval table on ROCO (top-1/top-2 %, third-party transcription).
PAPER_RETRIEVAL: list[dict[str, Any]] = [
    {"model": "CLIP", "i2t_top1": 26.68, "i2t_top2": 41.80, "t2i_top1": 26.17, "t2i_top2": 41.13},
    {"model": "PMC-CLIP", "i2t_top1": 75.47, "i2t_top2": 87.46, "t2i_top1": 76.78, "t2i_top2": 88.35},
    {"model": "BiomedCLIP", "i2t_top1": 81.83, "i2t_top2": 92.79, "t2i_top1": 81.36, "t2i_top2": 92.27},
    {"model": "+ InfoNCE", "i2t_top1": 84.21, "i2t_top2": 94.47, "t2i_top1": 85.73, "t2i_top2": 94.99},
    {"model": "+ DCL", "i2t_top1": 84.44, "i2t_top2": 94.68, "t2i_top1": 85.89, "t2i_top2": 95.09},
    {"model": "+ HN-NCE", "i2t_top1": 84.33, "i2t_top2": 94.60, "t2i_top1": 85.80, "t2i_top2": 95.10},
    {"model": "+ DHN-NCE", "i2t_top1": 84.70, "i2t_top2": 94.73, "t2i_top1": 85.99, "t2i_top2": 95.17},
]

_LABEL = {"infonce": "+ InfoNCE", "dcl": "+ DCL", "hn_nce": "+ HN-NCE", "dhn_nce": "+ DHN-NCE"}
_METRICS = ("i2t_top1", "i2t_top2", "t2i_top1", "t2i_top2")


def embed_pairs(clip: Any, pairs: Any, batch_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised image and caption embeddings ``[N, D]`` of a pair data set (float32, CPU)."""
    model = clip.model
    was_training = model.training
    model.eval()
    img, txt = [], []
    try:
        with torch.inference_mode():
            for b in range(0, len(pairs), batch_size):
                items = [pairs[i] for i in range(b, min(len(pairs), b + batch_size))]
                x = torch.stack(
                    [im if isinstance(im, torch.Tensor) else clip.preprocess(im) for im, _ in items]
                )
                t = trim_padding(model, clip.tokenize([c for _, c in items]))
                img.append(model.encode_image(x.to(clip.device), normalize=True).float().cpu())
                txt.append(model.encode_text(t.to(clip.device), normalize=True).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(img), torch.cat(txt)


def retrieval_scores(clip: Any, pairs: Any, *, runs: int = 5, seed: int = 0) -> dict[str, float]:
    """Top-1/top-2 retrieval (%) both ways on ``pairs``: the paper's protocol (batches of 50,
    ``runs`` shuffles; ``*_std`` the spread) with at least 50 pairs, else over the whole set.
    Identical captions count as each other's match (``pairs.captions`` when the set has it)."""
    img, txt = embed_pairs(clip, pairs)
    groups = getattr(pairs, "captions", None)
    if len(pairs) >= 50:
        res = retrieval_protocol(img, txt, batch=50, runs=runs, seed=seed, groups=groups)
        out = {k: m for k, (m, _) in res.items()}
        out.update({k + "_std": s for k, (_, s) in res.items()})
        return out
    return topk_accuracy(img, txt, (1, 2), groups)


def compare_losses(
    train: Any,
    test: Any,
    *,
    clip: Any = "toy",
    losses: Sequence[str] = LOSS_NAMES,
    config: FinetuneConfig | None = None,
    out_dir: str | Path = "runs/loss_comparison",
    runs: int = 5,
    device: str = "auto",
) -> list[dict[str, Any]]:
    """Fine-tune ``clip`` (anything :func:`~medclipsam.models.load_clip` takes) once per loss on
    ``train`` and score retrieval on ``test``; the first row is the model before fine-tuning.

    Every run starts from a fresh load of the same weights with ``config`` (its ``loss`` and
    ``out_dir`` replaced per loss: ``out_dir/<loss>``). Rows: ``model``, the four retrieval
    numbers (mean over ``runs``), their ``*_std``, ``steps`` and ``seconds`` of training.
    Resumable: a loss whose run already finished (``out_dir/<loss>/model.pt``) is scored from
    that file instead of being trained again.
    """
    base = config or FinetuneConfig()
    out_dir = Path(out_dir)
    name = str(clip)
    clip = load_clip(clip, device=device)
    start_state = copy.deepcopy(clip.model.state_dict())
    rows = [{"model": f"{name} (before)", **retrieval_scores(clip, test, runs=runs), "steps": 0,
             "seconds": 0.0}]
    for loss in losses:
        run_dir = out_dir / loss
        done = run_dir / "model.pt"
        t0 = time.perf_counter()
        if done.is_file():
            tuned = load_clip(done, device=device)
            steps = _steps_in_log(run_dir)
        else:
            clip.model.load_state_dict(start_state)
            cfg = replace(base, loss=loss, out_dir=str(run_dir))
            result = finetune(clip, train, None, cfg, resume=True)
            tuned, steps = clip, int(result["global_step"])
        seconds = time.perf_counter() - t0
        rows.append({"model": _LABEL.get(loss, loss), **retrieval_scores(tuned, test, runs=runs),
                     "steps": steps, "seconds": seconds})
    clip.model.load_state_dict(start_state)
    return rows


def _steps_in_log(run_dir: Path) -> int:
    try:
        history = json.loads((run_dir / "log.json").read_text())
        steps = history.get("steps") or []
        return int(steps[-1]["step"]) if steps else 0
    except (OSError, ValueError, KeyError, TypeError):
        return 0
