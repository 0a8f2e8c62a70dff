"""The toy CLIP of the phantom world: a small BiomedCLIP-shaped CLIP that learns from captions alone.

It stands in for BiomedCLIP in the toy world (the DHN-NCE lesson then fine-tunes it), so it is built
the way BiomedCLIP is and learns the way BiomedCLIP did:

* **Shaped like BiomedCLIP's image tower.** An open_clip ``CLIP`` whose image tower is open_clip's
  ``TimmModel`` around a timm ``VisionTransformer`` (224 px, 16 px patches: the same 14 x 14 grid and
  CLS token as BiomedCLIP's ``vit_base_patch16_224``, narrower and shallower), pooled at the **CLS
  token** after ``visual.trunk.norm``, then a bias-free linear projection ``visual.head.proj``:
  BiomedCLIP's ``timm_pool=""`` / ``timm_proj="linear"`` configuration. Module names match
  (``visual.trunk.blocks[i].norm1/attn/norm2/mlp``, ``visual.trunk.norm``), so every target-layer
  preset, the zero-gradient trap of the reference code's layer (the last block's ``norm2``: its
  patch tokens never reach the CLS output) and the token-to-grid reshaping run unchanged on both.
  The text side is open_clip's causal text transformer over a closed word vocabulary
  (:class:`~medclipsam.models.tokenizer.WordTokenizer`) instead of PubMedBERT.
* **Learned from image-caption pairs alone.** The only loss is the symmetric contrastive loss
  between images and captions: nothing touches patch tokens, attention or saliency maps, and no
  mask enters a loss. The phantom world's ground truth is used the way a real caption corpus
  reflects the world: to *write captions that describe what is visible*. Each training image is
  shown whole or through a random smooth occlusion (a smooth field on the 14 x 14 patch grid, or
  a blob over a finding, a decoy or anywhere, kept or hidden), applied the way gScoreCAM masks an
  image (the normalised image times a [0, 1] mask, hidden parts going to the mean grey), and
  captioned by what remains visible: the finding with its kind and position when it is visible,
  "normal tissue" when it is hidden, decoys (cysts, shadows, sinuses, the heart) named as what
  they are. Some captions are short noun phrases ("breast tumor", "right lung"), as figure labels
  are. This teaches what gScoreCAM relies on: recognising a finding in an image multiplied by a
  smooth mask.
* Batches are mostly drawn from one task (every other caption is a hard negative of the same
  modality); some mix tasks, so organ and modality words matter too. Identical captions in a batch
  count as positives of each other.

The stand-ins, stated plainly: a small ViT trained on one CPU core (``scripts/train_toy_models.py``
says for how long) instead of a ViT-B/16 trained on 15 million PubMed pairs; a word vocabulary
instead of PubMedBERT; captions written by a program from the phantom's ground truth instead of by
radiologists; occluded views (which real corpora do not have) so that a model this small learns
within that budget what masked images mean.

``python -m medclipsam.models.toy_clip --help`` (or ``scripts/train_toy_models.py``) trains it.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.model import CLIP
from scipy import ndimage as ndi
from tqdm.auto import tqdm

from .._utils import cpu_has_bf16, warmup_cosine
from ..data import phantom as ph
from ..data.phantom import ALT_PROMPTS, CLASSES, PROMPTS, TASKS, PhantomDataset
from .clip import save_clip_checkpoint
from .tokenizer import WordTokenizer
from .toy_vit import (
    GRID,
    OPENAI_MEAN,
    OPENAI_STD,
    TOY_CLIP_SIZE,
    TOY_VIT,
    register_toy_vit,
)

__all__ = [
    "EXTRA_WORDS",
    "TOY_CLIP_SIZE",
    "TOY_VIT",
    "TRAINING_DEFAULTS",
    "ToyCorpus",
    "build_toy_clip",
    "build_vocabulary",
    "describe_view",
    "occlusion_mask",
    "register_toy_vit",
    "toy_clip_config",
    "train_toy_clip",
]

PART_RES = 56  # resolution at which visibility of the parts is measured

# Words the training captions do not use but prompts and control prompts will ("liver",
# "normal"...), so they get their own ids instead of all collapsing onto <unk>.
EXTRA_WORDS = (
    "a an the of in on and with without showing image photo picture scan normal abnormal tissue "
    "healthy organ liver kidney heart spleen bone bones skull spine rib ribs vessel vessels cyst "
    "cysts fat tumor tumour tumors lesion lesions mass masses lung lungs brain breast chest xray x "
    "ray ultrasound mri ct background noise nothing random text finding findings region area"
).split()


# ============================================================================================
# architecture


def build_vocabulary(n_per_task: int = 300, seed: int = 12345, context_length: int = 32) -> WordTokenizer:
    """The toy CLIP's word vocabulary: every word of the phantom captions of ``n_per_task``
    samples per task, of the view captions :func:`describe_view` writes, the segmentation prompts,
    the class names and :data:`EXTRA_WORDS`."""

    texts: list[str] = list(_caption_words())
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
            "timm_model_name": TOY_VIT,
            "timm_model_pretrained": False,
            "timm_pool": "",
            "timm_proj": "linear",
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
    register_toy_vit()
    cfg = toy_clip_config(tokenizer.vocab_size, tokenizer.context_length)
    return CLIP(embed_dim=cfg["embed_dim"], vision_cfg=cfg["vision_cfg"], text_cfg=cfg["text_cfg"])


# ============================================================================================
# captions of a (possibly occluded) view


_MODALITY = {
    "breast": ("breast ultrasound", "breast sonogram", "ultrasound image of the breast"),
    "brain": ("brain MRI", "axial contrast-enhanced brain MRI", "post-contrast T1 brain MRI"),
    "xray": ("chest x-ray", "frontal chest radiograph", "PA chest X-ray"),
}
_SHOWING = ("{m} showing {x}", "{m} with {x}", "{m}: {x}", "{m} demonstrating {x}")
_NO_FINDING = {
    "breast": ("normal breast tissue", "breast tissue with no visible lesion",
               "unremarkable fibroglandular tissue", "normal-appearing breast parenchyma"),
    "brain": ("normal brain tissue", "brain parenchyma with no visible tumor",
              "unremarkable brain tissue", "normal-appearing grey and white matter"),
}
_SHORT_FINDING = {
    "breast": ("breast tumor", "breast lesion", "breast mass", "hypoechoic breast mass",
               "{label} breast tumor", "{label} breast lesion"),
    "brain": ("brain tumor", "brain lesion", "enhancing brain mass", "intracranial tumor",
              "{label}", "{label} tumor"),
}
_SHORT_NORMAL = {
    "breast": ("normal breast tissue", "breast tissue", "normal tissue"),
    "brain": ("normal brain tissue", "brain tissue", "normal tissue"),
}
_DECOY_WORDS = {
    "cyst": ("an anechoic cyst", "a simple cyst", "a small anechoic cyst"),
    "shadow": ("an acoustic shadow", "a posterior shadowing band", "a shadowing artifact"),
    "sinus": ("an enhancing venous sinus", "a bright dural sinus"),
    "choroid plexus": ("enhancing choroid plexus", "bright choroid plexus"),
    "vessel": ("an enhancing cortical vessel", "a small bright vessel"),
    "scalp fat": ("bright scalp fat", "subcutaneous scalp fat"),
}
_DECOY_SHORT = {
    "cyst": ("breast cyst", "cyst"), "shadow": ("acoustic shadow",), "sinus": ("venous sinus",),
    "choroid plexus": ("choroid plexus",), "vessel": ("vessel",), "scalp fat": ("scalp fat",),
}
_LUNG_WORDS = {
    "both": ("both lungs", "the lungs", "both lung fields", "left and right lung"),
    "right": ("the right lung", "the right lung field"),
    "left": ("the left lung", "the left lung field"),
}
_LUNG_SHORT = {
    "both": ("lungs", "both lungs", "lung fields", "left and right lung"),
    "right": ("right lung", "right lung field"),
    "left": ("left lung", "left lung field"),
}
_NO_LUNG = ("the mediastinum", "the chest wall", "the upper abdomen", "soft tissue of the chest")
_HEART = ("the heart", "the cardiac silhouette", "a normal heart")


def _caption_words() -> list[str]:
    """Every fixed phrase :func:`describe_view` can use (for the vocabulary)."""
    out: list[str] = []
    for group in (_MODALITY, _NO_FINDING, _SHORT_FINDING, _SHORT_NORMAL, _DECOY_WORDS, _DECOY_SHORT,
                  _LUNG_WORDS, _LUNG_SHORT):
        for v in group.values():
            out.extend(v)
    out.extend(_SHOWING)
    out.extend(_NO_LUNG)
    out.extend(_HEART)
    out.extend(["and", "part of", "with patchy consolidation", "clear", "pneumonia", "opacities", "glioma",
                "meningioma", "pituitary", "benign", "malignant"])
    return out


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def describe_view(
    task: str, label: str, visible: dict[str, bool], words: dict, rng: np.random.Generator,
    short: bool = False,
) -> str:
    """A caption of what is visible in one view of a phantom image.

    ``visible`` maps part names (``"finding"``, decoy kinds, ``"lung_right"``, ``"lung_left"``,
    ``"opacity"``, ``"heart"``) to whether enough of them is left visible; ``words`` holds the
    sample's own finding and location phrases (from the phantom world's caption writer). ``short``
    gives a noun phrase instead of a sentence.
    """
    m = _pick(rng, _MODALITY[task])
    if task == "xray":
        r, lft = visible.get("lung_right", False), visible.get("lung_left", False)
        side = "both" if (r and lft) else "right" if r else "left" if lft else None
        partly = side is not None and "part" in (r if r else True, lft if lft else True)
        heart = visible.get("heart", False) is True
        if short:
            if side is not None:
                return ("part of " if partly else "") + _pick(rng, _LUNG_SHORT[side])
            return _pick(rng, ("heart", "cardiac silhouette")) if heart else _pick(rng, ("mediastinum", "chest wall"))
        if side is None:
            x = _pick(rng, _HEART) if heart else _pick(rng, _NO_LUNG)
        else:
            x = ("part of " if partly else "") + _pick(rng, _LUNG_WORDS[side])
            if label == "pneumonia" and visible.get("opacity", False):
                x += " " + _pick(rng, ("with patchy consolidation", "with patchy airspace opacities",
                                       "with ill-defined opacities"))
            elif rng.random() < 0.5:
                x += " " + _pick(rng, ("with no consolidation", "that are clear", "with no focal opacity"))
            if heart and rng.random() < 0.5:
                x += " and " + _pick(rng, _HEART)
        return _pick(rng, _SHOWING).format(m=m, x=x)
    found = label != "normal" and visible.get("finding", False)
    partly = found == "part"
    decoys = [k for k in _DECOY_WORDS if visible.get(k, False) is True]
    if short:
        if found:
            return ("part of a " if partly else "") + _pick(rng, _SHORT_FINDING[task]).format(label=label)
        if decoys and rng.random() < 0.5:
            return _pick(rng, _DECOY_SHORT[_pick(rng, decoys)])
        return _pick(rng, _SHORT_NORMAL[task])
    if found:
        x = f"{_pick(rng, words['findings'])} in the {_pick(rng, words['locations'])}"
        if partly:
            x = "part of " + x
    else:
        x = _pick(rng, _NO_FINDING[task])
    if decoys and rng.random() < 0.7:
        x += " and " + _pick(rng, _DECOY_WORDS[_pick(rng, decoys)])
    return _pick(rng, _SHOWING).format(m=m, x=x)


# ============================================================================================
# the training corpus: phantom images with the parts a caption can name


def _fraction_map(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool -> (PART_RES, PART_RES) float32 share of each cell inside the mask."""
    t = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
    return F.adaptive_avg_pool2d(t, PART_RES)[0, 0].numpy()


def _parts(sample) -> dict[str, np.ndarray]:
    """The named parts of a phantom sample as boolean masks (only those present)."""
    meta, task = sample.meta, sample.task
    out: dict[str, np.ndarray] = {}
    if task == "xray":
        lungs = sample.mask
        mid = int(round(meta["midline_col"]))
        cols = np.arange(lungs.shape[1])[None, :]
        out["lung_right"] = lungs & (cols < mid)  # radiological: patient right = image left
        out["lung_left"] = lungs & (cols >= mid)
        if meta.get("opacity_mask") is not None and meta["opacity_mask"].any():
            out["opacity"] = meta["opacity_mask"]
        out["heart"] = meta["heart_mask"]
        return out
    if sample.mask.any():
        out["finding"] = sample.mask
    dm = meta.get("decoy_mask")
    for d in meta.get("decoys", []):
        if d.get("bbox") is None or dm is None:
            continue
        r0, c0, r1, c1 = d["bbox"]
        m = np.zeros_like(dm)
        m[r0:r1, c0:c1] = dm[r0:r1, c0:c1]
        if m.any():
            out[d["kind"]] = out[d["kind"]] | m if d["kind"] in out else m
    return out


def _sample_words(sample) -> dict:
    """The finding and location phrases the phantom world's caption writer uses for ``sample``."""

    finds, locs = ph.caption_words(sample)
    return {"findings": finds, "locations": locs}


@dataclass
class ToyCorpus:
    """Phantom images of several tasks with the parts their captions can name.

    ``images`` (N, S, S) uint8; ``parts[i]`` maps part names to (56, 56) float32 fraction maps;
    ``words[i]`` the sample's finding and location phrases.
    """

    tasks: list[str]
    labels: list[str]
    images: torch.Tensor
    parts: list[dict[str, np.ndarray]]
    words: list[dict]
    by_task: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def generate(cls, tasks: Sequence[str], n_per_task: int, *, seed: int, split: str = "train",
                 progress: bool = False) -> ToyCorpus:


        t_l, l_l, imgs, parts, words = [], [], [], [], []
        for task in tasks:
            ds = PhantomDataset(task, n_per_task, seed=seed, size=TOY_CLIP_SIZE, split=split)
            for i in tqdm(range(len(ds)), desc=f"phantom {task}", disable=not progress):
                s = ds[i]
                t_l.append(task)
                l_l.append(s.label)
                imgs.append(torch.from_numpy(s.image))
                parts.append({k: _fraction_map(v) for k, v in _parts(s).items()})
                words.append(_sample_words(s) if task != "xray" else {})
        corpus = cls(t_l, l_l, torch.stack(imgs), parts, words)
        corpus.by_task = {t: np.array([i for i, x in enumerate(t_l) if x == t]) for t in tasks}
        return corpus

    def __len__(self) -> int:
        return len(self.tasks)


# ============================================================================================
# occlusion masks shaped like gScoreCAM's channel masks


def _minmax(a: np.ndarray) -> np.ndarray:
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi - lo > 1e-6 else np.ones_like(a)


def _smooth_field(rng: np.random.Generator) -> np.ndarray:

    f = ndi.gaussian_filter(rng.standard_normal((GRID, GRID)), rng.uniform(0.6, 2.5), mode="nearest")
    f = _minmax(f)
    return f ** rng.uniform(0.7, 4.0)


def _blob(rng: np.random.Generator, centre: tuple[float, float], radius: float) -> np.ndarray:
    yy, xx = np.mgrid[0:GRID, 0:GRID].astype(np.float64) + 0.5
    r2 = ((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) / max(radius, 0.4) ** 2
    return np.exp(-0.5 * r2 ** rng.uniform(1.0, 2.0))


def _part_centre(frac: np.ndarray) -> tuple[tuple[float, float], float]:
    """Centre (in grid cells) and radius of a part from its 56 x 56 fraction map."""
    w = frac.sum()
    yy, xx = np.mgrid[0:PART_RES, 0:PART_RES].astype(np.float64) + 0.5
    cy, cx = (frac * yy).sum() / w, (frac * xx).sum() / w
    s = GRID / PART_RES
    radius = math.sqrt(w / math.pi) * s
    return (cy * s, cx * s), radius


def occlusion_mask(parts: dict[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """A (14, 14) mask in [0, 1] (min 0, max 1, like gScoreCAM's normalised channel maps): a
    smooth random field, or a blob over one of the parts (or anywhere), kept or hidden."""
    if rng.random() < 0.45 or not parts:
        m = _smooth_field(rng)
    else:
        names = list(parts)
        if rng.random() < 0.2:
            centre, radius = tuple(rng.uniform(1, GRID - 1, 2)), rng.uniform(1.0, 4.0)
        else:
            # the finding (or the lungs) half the time when there is one: views that keep or hide
            # exactly the thing a prompt names are what gScoreCAM's masked images look like
            focus = [n for n in names if n in ("finding", "lung_right", "lung_left")]
            name = _pick(rng, focus) if focus and rng.random() < 0.5 else _pick(rng, names)
            centre, radius = _part_centre(parts[name])
            centre = (centre[0] + rng.normal(0, 0.4), centre[1] + rng.normal(0, 0.4))
            radius = radius * rng.uniform(0.8, 2.5)
        m = _blob(rng, centre, radius)
        if rng.random() < 0.35:
            m = 1.0 - m
    return _minmax(m).astype(np.float32)


VISIBLE, HIDDEN = 0.65, 0.3


def _visible(parts: dict[str, np.ndarray], mask_hr: np.ndarray | None) -> dict[str, bool | str]:
    """How visible each part stays under a mask, from the mean mask value over the part:
    True (>= 0.65), ``"part"`` (0.3 to 0.65: partly visible) or False (< 0.3)."""
    if mask_hr is None:
        return {k: True for k in parts}
    out: dict[str, bool | str] = {}
    for k, v in parts.items():
        f = float((v * mask_hr).sum() / max(v.sum(), 1e-6))
        out[k] = True if f >= VISIBLE else ("part" if f >= HIDDEN else False)
    return out


def normalize_batch(images_u8: torch.Tensor) -> torch.Tensor:
    """(B, H, W) grey uint8 -> (B, 3, H, W) float, scaled and normalised like CLIP's preprocessing."""
    x = images_u8.float().div_(255.0).unsqueeze(1).expand(-1, 3, -1, -1)
    mean = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def make_views(
    corpus: ToyCorpus, idx: np.ndarray, rng: np.random.Generator, *, p_whole: float = 0.35,
    p_short: float = 0.3,
) -> tuple[torch.Tensor, list[str]]:
    """Normalised views ``[B, 3, S, S]`` of ``corpus.images[idx]`` and their captions."""
    x = normalize_batch(corpus.images[idx])
    masks = torch.ones(len(idx), 1, GRID, GRID)
    caps = []
    for j, i in enumerate(idx):
        parts = corpus.parts[i]
        m = None
        if rng.random() >= p_whole:
            m = occlusion_mask(parts, rng)
            masks[j, 0] = torch.from_numpy(m)
        m_hr = None
        if m is not None:
            m_hr = F.interpolate(torch.from_numpy(m)[None, None], size=PART_RES, mode="bilinear",
                                 align_corners=False)[0, 0].numpy()
        vis = _visible(parts, m_hr)
        caps.append(describe_view(corpus.tasks[i], corpus.labels[i], vis, corpus.words[i], rng,
                                  short=bool(rng.random() < p_short)))
    up = F.interpolate(masks, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return x * up, caps


# ============================================================================================
# training


def _contrastive(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor, captions: list[str]) -> torch.Tensor:
    """Symmetric InfoNCE; identical caption strings in a batch count as positives of each other."""
    logits = scale * img @ txt.t()
    same = torch.tensor([[a == b for b in captions] for a in captions], dtype=torch.float32)
    target = same / same.sum(1, keepdim=True)
    return 0.5 * (
        torch.sum(-target * F.log_softmax(logits, 1), 1).mean()
        + torch.sum(-target * F.log_softmax(logits.t(), 1), 1).mean()
    )


_print_flush = partial(print, flush=True)

# The settings that produced the shipped medclipsam/weights/toy_clip.pt (scripts/train_toy_models.py).
TRAINING_DEFAULTS: dict = {
    "steps": 3000, "batch_size": 48, "lr": 5e-4, "n_train_per_task": 1500, "p_mixed": 0.25,
    "p_whole": 0.35, "p_short": 0.3, "seed": 0, "half_every": 1000,
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
    p_mixed: float = 0.25,
    p_whole: float = 0.35,
    p_short: float = 0.3,
    seed: int = 0,
    threads: int | None = None,
    log: Callable[[str], None] = _print_flush,
    log_every: int = 100,
    save_every: int = 0,
    half_every: int = 0,
) -> dict:
    """Train the toy CLIP from scratch on captioned phantom views and save it with
    ``save_clip_checkpoint``.

    Returns a summary (steps, seconds, final loss). Deterministic for a given seed and thread
    count on one machine. ``half_every`` > 0 rounds the weights to half precision (the precision
    they ship in) every that many steps, as saving a snapshot and resuming from it would; the
    shipped model was trained with ``half_every=1000``. ``save_every`` > 0 also writes
    ``<out>.step<N>.pt`` snapshots (in half precision, so they round the weights too).
    """

    if threads:
        torch.set_num_threads(int(threads))
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    tok = build_vocabulary()
    model = build_toy_clip(tok)
    log(f"toy CLIP: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, "
        f"vocabulary {tok.vocab_size} words")
    data = ToyCorpus.generate(TASKS, n_train_per_task, seed=seed, split="train")
    log(f"generated {len(data)} phantom images in {time.perf_counter() - t0:.0f} s")

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "embed" in name or "logit_scale" in name or "token" in name
         else decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr, betas=(0.9, 0.98), eps=1e-6,
    )
    # bf16 autocast on CPUs with bf16 units (AMX/AVX512-BF16), which run it faster; fp32 elsewhere.
    bf16 = bool(getattr(torch.backends, "mkldnn", None)) and cpu_has_bf16()
    log(f"bf16 autocast: {bf16}")
    model.train()
    hist: list[float] = []
    t_train = time.perf_counter()
    all_idx = np.arange(len(data))
    for step in range(steps):
        if rng.random() < p_mixed:
            idx = rng.choice(all_idx, size=batch_size, replace=False)
        else:
            task = TASKS[step % len(TASKS)]
            idx = rng.choice(data.by_task[task], size=batch_size, replace=False)
        images, caps = make_views(data, idx, rng, p_whole=p_whole, p_short=p_short)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            img_emb = model.encode_image(images)
            txt_emb = model.encode_text(tok(caps))
        img_emb = F.normalize(img_emb.float(), dim=-1)
        txt_emb = F.normalize(txt_emb.float(), dim=-1)
        scale = model.logit_scale.exp().clamp(max=100)
        loss = _contrastive(img_emb, txt_emb, scale, caps)
        for g in opt.param_groups:
            g["lr"] = lr * warmup_cosine(step, warmup, steps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        hist.append(loss.item())
        if (step + 1) % log_every == 0 or step == 0:
            el = time.perf_counter() - t_train
            log(f"step {step + 1}/{steps}  loss {np.mean(hist[-log_every:]):.3f}  "
                f"scale {scale.item():.1f}  {el / (step + 1):.2f} s/step")
        if step + 1 < steps and any(n and (step + 1) % n == 0 for n in (half_every, save_every)):
            _round_to_half(model)
        if save_every and (step + 1) % save_every == 0 and step + 1 < steps:
            _save(model, tok, Path(f"{out_path}.step{step + 1}.pt"), {"steps": step + 1, "seed": seed})
    model.eval()
    seconds = time.perf_counter() - t0
    summary = {
        "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
        "n_train_per_task": n_train_per_task, "p_mixed": p_mixed, "p_whole": p_whole,
        "p_short": p_short, "seconds": round(seconds, 1),
        "final_loss": float(np.mean(hist[-100:])),
    }
    _save(model, tok, Path(out_path), summary)
    log(f"saved {out_path} ({Path(out_path).stat().st_size / 1e6:.1f} MB) after {seconds / 60:.1f} min")
    return summary


def _round_to_half(model: torch.nn.Module) -> None:
    """Round every parameter and buffer to half precision and back (what a saved snapshot holds)."""
    model.half()
    model.float()


def _save(model: torch.nn.Module, tok: WordTokenizer, path: Path, meta: dict) -> None:
    was_training = model.training
    model.eval()
    # Half precision halves the shipped file; the loader copies it into float32 modules.
    model.half()
    try:
        save_clip_checkpoint(
            model, path, model_name="medclipsam-toy-clip",
            model_config=toy_clip_config(tok.vocab_size, tok.context_length),
            preprocess_cfg={"size": TOY_CLIP_SIZE, "mean": OPENAI_MEAN, "std": OPENAI_STD},
            tokenizer=tok, trained_on="phantom world (medclipsam.data.phantom), captioned views",
            **meta,
        )
    finally:
        model.float()
        model.train(was_training)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Train the toy CLIP on captioned phantom views.")
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "weights" / "toy_clip.pt"))
    d = TRAINING_DEFAULTS
    p.add_argument("--steps", type=int, default=d["steps"])
    p.add_argument("--batch-size", type=int, default=d["batch_size"])
    p.add_argument("--lr", type=float, default=d["lr"])
    p.add_argument("--n-train-per-task", type=int, default=d["n_train_per_task"])
    p.add_argument("--p-mixed", type=float, default=d["p_mixed"])
    p.add_argument("--p-whole", type=float, default=d["p_whole"])
    p.add_argument("--p-short", type=float, default=d["p_short"])
    p.add_argument("--seed", type=int, default=d["seed"])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--save-every", type=int, default=0)
    p.add_argument("--half-every", type=int, default=d["half_every"])
    a = p.parse_args(argv)
    train_toy_clip(
        a.out, steps=a.steps, batch_size=a.batch_size, lr=a.lr, n_train_per_task=a.n_train_per_task,
        p_mixed=a.p_mixed, p_whole=a.p_whole, p_short=a.p_short, seed=a.seed, threads=a.threads,
        save_every=a.save_every, half_every=a.half_every,
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
