"""The toy CLIP of the phantom world: a small open_clip CLIP that knows *where* findings are.

It stands in for the off-the-shelf BiomedCLIP in the toy world (the DHN-NCE lesson then fine-tunes
it). Architecture: open_clip's own ``CLIP`` with a ViT image tower (224 px, 16 px patches: the same
14 x 14 grid as BiomedCLIP's ViT-B/16, narrower and shallower) and a small causal text transformer
over a closed word vocabulary (:class:`~medclipsam.models.tokenizer.WordTokenizer`).

Two choices make its saliency maps meaningful, and both are stand-ins, documented as such:

* **Average pooling** of the patch tokens (``pool_type="avg"``) instead of the CLS token. With CLS
  pooling the last block's patch tokens never reach the output (their gradient is exactly zero), so a
  CAM hooked there sees nothing; with average pooling every patch token contributes to the image
  embedding.
* **Auxiliary localisation supervision** during this toy pre-training only: besides the contrastive
  loss over image-caption pairs, the projected patch tokens of an image are pulled towards the text
  embedding of its task's segmentation prompts ("breast tumor", "lungs", ...) inside the ground-truth
  mask and pushed away outside it. BiomedCLIP learned where findings are from 15 million real
  image-caption pairs; a model trained for minutes on a few thousand phantom pairs does not (a
  contrastive-only toy CLIP learns modality and presence but its maps follow brightness). Masks are
  used here, in training the toy model, and **never at inference**.

Training batches hold one task at a time, so every caption in a batch is a hard negative of the same
modality and the modality is no shortcut.

``python -m medclipsam.models.toy_clip --help`` (or ``scripts/train_toy_models.py``) trains it.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .._utils import cpu_has_bf16, warmup_cosine
from .tokenizer import WordTokenizer

__all__ = [
    "EXTRA_WORDS",
    "TRAINING_DEFAULTS",
    "TOY_CLIP_SIZE",
    "PhantomPairs",
    "build_toy_clip",
    "build_vocabulary",
    "patch_token_features",
    "toy_clip_config",
    "train_toy_clip",
]

TOY_CLIP_SIZE = 224
PATCH = 16
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

# Words the phantom captions do not use but prompts and control prompts will ("liver", "normal"...),
# so they get their own ids instead of all collapsing onto <unk>.
EXTRA_WORDS = (
    "a an the of in on and with without showing image photo picture scan normal abnormal tissue "
    "healthy organ liver kidney heart spleen bone bones skull spine rib ribs vessel vessels cyst "
    "cysts fat tumor tumour tumors lesion lesions mass masses lung lungs brain breast chest xray x "
    "ray ultrasound mri ct background noise nothing random text finding findings region area"
).split()


def build_vocabulary(n_per_task: int = 300, seed: int = 12345, context_length: int = 32) -> WordTokenizer:
    """The toy CLIP's word vocabulary: every word of ``n_per_task`` phantom samples' captions per
    task, the segmentation prompts, the class names and :data:`EXTRA_WORDS`."""
    from ..data.phantom import ALT_PROMPTS, CLASSES, PROMPTS, TASKS, PhantomDataset

    texts: list[str] = []
    for task in TASKS:
        ds = PhantomDataset(task, n_per_task, seed=seed, size=64, split="train")
        for i in range(len(ds)):
            texts.extend(ds[i].captions)
        texts.append(PROMPTS[task])
        texts.extend(ALT_PROMPTS[task])
        texts.extend(CLASSES[task])
    return WordTokenizer.from_texts(texts, EXTRA_WORDS, context_length=context_length)


def toy_clip_config(vocab_size: int, context_length: int = 32) -> dict:
    """The open_clip model config of the toy CLIP (plain data, stored in its checkpoint)."""
    return {
        "embed_dim": 128,
        "vision_cfg": {
            "image_size": TOY_CLIP_SIZE,
            "patch_size": PATCH,
            "width": 128,
            "layers": 4,
            "head_width": 32,
            "pool_type": "avg",
        },
        "text_cfg": {
            "context_length": context_length,
            "vocab_size": vocab_size,
            "width": 128,
            "heads": 4,
            "layers": 3,
        },
    }


def build_toy_clip(tokenizer: WordTokenizer) -> torch.nn.Module:
    """A randomly initialised toy CLIP for ``tokenizer``'s vocabulary."""
    from open_clip.model import CLIP

    cfg = toy_clip_config(tokenizer.vocab_size, tokenizer.context_length)
    return CLIP(embed_dim=cfg["embed_dim"], vision_cfg=cfg["vision_cfg"], text_cfg=cfg["text_cfg"])


def normalize_batch(images_u8: torch.Tensor) -> torch.Tensor:
    """(B, H, W) grey uint8 -> (B, 3, H, W) float, scaled and normalised like CLIP's preprocessing."""
    x = images_u8.float().div_(255.0).unsqueeze(1).expand(-1, 3, -1, -1)
    mean = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def patch_token_features(model: torch.nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Image embedding (B, D) and projected patch-token features (B, N, D), both L2-normalised.

    With average pooling the (unnormalised) image embedding is the mean of the projected patch
    tokens, so the image-text similarity decomposes over patches.
    """
    visual = model.visual
    old = visual.output_tokens
    visual.output_tokens = True
    try:
        pooled, tokens = visual(images)
    finally:
        visual.output_tokens = old
    feats = tokens @ visual.proj
    return F.normalize(pooled, dim=-1), F.normalize(feats, dim=-1)


@dataclass
class PhantomPairs:
    """A fixed, pre-generated set of phantom image-caption pairs with patch-level mask fractions."""

    task: list[str]
    label: list[str]
    images: torch.Tensor  # (N, S, S) uint8
    patch_masks: torch.Tensor  # (N, G, G) float: fraction of each patch inside the mask
    captions: list[list[str]]

    @classmethod
    def generate(
        cls, tasks: Sequence[str], n_per_task: int, *, seed: int, split: str, size: int = TOY_CLIP_SIZE,
        progress: bool = False,
    ) -> PhantomPairs:
        from tqdm.auto import tqdm

        from ..data.phantom import PhantomDataset

        task_l, label_l, imgs, masks, caps = [], [], [], [], []
        for task in tasks:
            ds = PhantomDataset(task, n_per_task, seed=seed, size=size, split=split)
            for i in tqdm(range(len(ds)), desc=f"phantom {task}", disable=not progress):
                s = ds[i]
                task_l.append(task)
                label_l.append(s.label)
                imgs.append(torch.from_numpy(s.image))
                masks.append(torch.from_numpy(s.mask.astype(np.float32)))
                caps.append(list(s.captions))
        images = torch.stack(imgs)
        m = torch.stack(masks).unsqueeze(1)
        patch = F.avg_pool2d(m, PATCH).squeeze(1)
        return cls(task_l, label_l, images, patch, caps)

    def __len__(self) -> int:
        return len(self.task)

    def indices_of(self, task: str) -> np.ndarray:
        return np.array([i for i, t in enumerate(self.task) if t == task])


def _contrastive(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor, captions: list[str]) -> torch.Tensor:
    """Symmetric InfoNCE; identical caption strings in a batch count as positives of each other."""
    logits = scale * img @ txt.t()
    same = torch.tensor([[a == b for b in captions] for a in captions], dtype=torch.float32)
    target = same / same.sum(1, keepdim=True)
    return 0.5 * (
        torch.sum(-target * F.log_softmax(logits, 1), 1).mean()
        + torch.sum(-target * F.log_softmax(logits.t(), 1), 1).mean()
    )


def _localisation(
    feats: torch.Tensor, prompt_emb: torch.Tensor, patch_mask: torch.Tensor, scale: torch.Tensor,
    bias: torch.Tensor,
) -> torch.Tensor:
    """Balanced BCE between per-patch prompt similarity and the patch mask fraction."""
    sim = torch.einsum("bnd,bd->bn", feats, prompt_emb)
    logits = scale * sim + bias
    target = patch_mask.flatten(1)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    pos = target > 0.5
    neg = target < 0.05
    loss_neg = bce[neg].mean() if neg.any() else bce.new_zeros(())
    loss_pos = bce[pos].mean() if pos.any() else bce.new_zeros(())
    return loss_neg + loss_pos


_print_flush = partial(print, flush=True)


# The settings that produced the shipped medclipsam/weights/toy_clip.pt (scripts/train_toy_models.py).
TRAINING_DEFAULTS: dict = {
    "steps": 4000, "batch_size": 32, "lr": 5e-4, "n_train_per_task": 2000, "loc_weight": 1.0, "seed": 0,
}


def train_toy_clip(
    out_path: str | Path,
    *,
    steps: int = 3000,
    batch_size: int = 48,
    lr: float = 5e-4,
    weight_decay: float = 0.05,
    warmup: int = 200,
    n_train_per_task: int = 1500,
    loc_weight: float = 1.0,
    seed: int = 0,
    threads: int | None = None,
    log: Callable[[str], None] = _print_flush,
    log_every: int = 100,
) -> dict:
    """Train the toy CLIP from scratch on phantom pairs and save it with ``save_clip_checkpoint``.

    Returns a summary (steps, seconds, final losses). Deterministic for a given seed and thread
    count on one machine.
    """
    from ..data.phantom import ALT_PROMPTS, PROMPTS, TASKS
    from .clip import save_clip_checkpoint

    if threads:
        torch.set_num_threads(int(threads))
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    tok = build_vocabulary()
    model = build_toy_clip(tok)
    log(f"toy CLIP: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, "
        f"vocabulary {tok.vocab_size} words")
    data = PhantomPairs.generate(TASKS, n_train_per_task, seed=seed, split="train")
    log(f"generated {len(data)} phantom pairs in {time.perf_counter() - t0:.0f} s")
    by_task = {t: data.indices_of(t) for t in TASKS}
    prompts = {t: [PROMPTS[t], *[p for p in ALT_PROMPTS[t] if p != PROMPTS[t]]] for t in TASKS}
    prompt_tokens = {t: tok(prompts[t]) for t in TASKS}

    loc_scale = torch.nn.Parameter(torch.tensor(10.0))
    loc_bias = torch.nn.Parameter(torch.tensor(-2.0))
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "embedding" in name or "logit_scale" in name else decay).append(p)
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay + [loc_scale, loc_bias], "weight_decay": 0.0},
        ],
        lr=lr, betas=(0.9, 0.98), eps=1e-6,
    )

    # bf16 autocast: about 1.7x faster on CPUs with bf16 units (AMX/AVX512-BF16); fp32 elsewhere.
    bf16 = bool(getattr(torch.backends, "mkldnn", None)) and cpu_has_bf16()
    log(f"bf16 autocast: {bf16}")
    model.train()
    hist: dict[str, list[float]] = {"clip": [], "loc": []}
    t_train = time.perf_counter()
    for step in range(steps):
        task = TASKS[step % len(TASKS)]
        idx = rng.choice(by_task[task], size=batch_size, replace=False)
        images = normalize_batch(data.images[idx])
        caps = [data.captions[i][rng.integers(len(data.captions[i]))] for i in idx]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            img_emb, feats = patch_token_features(model, images)
            txt_emb = model.encode_text(tok(caps))
            p_emb = model.encode_text(prompt_tokens[task])
        img_emb, feats = img_emb.float(), feats.float()
        txt_emb = F.normalize(txt_emb.float(), dim=-1)
        p_emb = F.normalize(p_emb.float(), dim=-1)
        scale = model.logit_scale.exp().clamp(max=100)
        l_clip = _contrastive(img_emb, txt_emb, scale, caps)
        which = torch.from_numpy(rng.integers(len(prompts[task]), size=batch_size))
        l_loc = _localisation(feats, p_emb[which], data.patch_masks[idx], loc_scale, loc_bias)
        loss = l_clip + loc_weight * l_loc
        for g in opt.param_groups:
            g["lr"] = lr * warmup_cosine(step, warmup, steps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        hist["clip"].append(l_clip.item())
        hist["loc"].append(l_loc.item())
        if (step + 1) % log_every == 0 or step == 0:
            el = time.perf_counter() - t_train
            log(f"step {step + 1}/{steps}  clip {np.mean(hist['clip'][-log_every:]):.3f}  "
                f"loc {np.mean(hist['loc'][-log_every:]):.3f}  scale {scale.item():.1f}  "
                f"{el / (step + 1):.2f} s/step")
    model.eval()
    seconds = time.perf_counter() - t0
    summary = {
        "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
        "n_train_per_task": n_train_per_task, "loc_weight": loc_weight,
        "seconds": round(seconds, 1), "final_clip_loss": float(np.mean(hist["clip"][-100:])),
        "final_loc_loss": float(np.mean(hist["loc"][-100:])),
    }
    # Half precision halves the shipped file; the loader copies it into float32 modules.
    model.half()
    save_clip_checkpoint(
        model, out_path, model_name="medclipsam-toy-clip",
        model_config=toy_clip_config(tok.vocab_size, tok.context_length),
        preprocess_cfg={"size": TOY_CLIP_SIZE, "mean": OPENAI_MEAN, "std": OPENAI_STD},
        tokenizer=tok, trained_on="phantom world (medclipsam.data.phantom)", **summary,
    )
    model.float()
    log(f"saved {out_path} ({Path(out_path).stat().st_size / 1e6:.1f} MB) after {seconds / 60:.1f} min")
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Train the toy CLIP on the phantom world.")
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "weights" / "toy_clip.pt"))
    d = TRAINING_DEFAULTS
    p.add_argument("--steps", type=int, default=d["steps"])
    p.add_argument("--batch-size", type=int, default=d["batch_size"])
    p.add_argument("--lr", type=float, default=d["lr"])
    p.add_argument("--n-train-per-task", type=int, default=d["n_train_per_task"])
    p.add_argument("--loc-weight", type=float, default=d["loc_weight"])
    p.add_argument("--seed", type=int, default=d["seed"])
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    train_toy_clip(
        a.out, steps=a.steps, batch_size=a.batch_size, lr=a.lr, n_train_per_task=a.n_train_per_task,
        loc_weight=a.loc_weight, seed=a.seed, threads=a.threads,
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
