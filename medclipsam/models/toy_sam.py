"""The toy SAM of the phantom world: segment_anything's own architecture, shrunk and trained here.

``load_sam("toy")`` reads ``medclipsam/weights/toy_sam.pt``, which :func:`train_toy_sam` writes.
The model is built by :func:`medclipsam.models.sam.build_sam` from :data:`TOY_SAM_CONFIG`, so it is
made of segment_anything's ``ImageEncoderViT``, ``PromptEncoder``, ``MaskDecoder`` and
``TwoWayTransformer`` (a 256-px input, a 16 x 16 embedding grid, narrower and shallower than
ViT-B) and is driven by an unmodified ``SamPredictor``.

Training follows SAM's recipe on phantom images of all three tasks, mixed in every batch:

* inputs are made exactly as ``SamPredictor.set_image`` makes them (RGB uint8 ->
  ``ResizeLongestSide(256)`` -> ``Sam.preprocess`` normalisation and bottom/right padding); some
  phantoms are drawn non-square, so the model sees padding and scale changes;
* prompts are per connected component (one lung per box for the chest X-ray): the ground-truth
  box jittered by about 10 % of its side (capped), sometimes with 1-2 extra points, or 1-3
  positive/negative points alone;
* the model must follow the prompt, not find the lesion by itself: ~20 % of the prompts pick
  out a decoy instead (a cyst, a venous sinus, ...: the target is then that decoy) and ~12 % are
  boxes on no object (the target is the little that lies inside). Trained on target prompts
  only, a box anywhere still returned the lesion (Dice ~0.8 against it from a box elsewhere);
  now such a box gives Dice ~0 (``tests/test_toy_sam.py``, ``benchmarks/toy_sam_quality.py``);
* loss = 20 x focal + 1 x Dice on the mask logits upsampled to the input, plus the MSE between
  the IoU head and the IoU the mask actually reaches; one mask for box prompts, three masks with
  the minimum loss for point-only prompts (their ambiguity);
* light augmentation: gain/gamma/offset jitter of the intensities, horizontal flips.

Components smaller than :data:`MIN_COMPONENT_FRACTION` of the mask (one-pixel specks that the
phantom's spiculated lesions shed) get no box, in training and in :func:`evaluate_toy_sam`.

``python -m medclipsam.models.toy_sam --help`` trains it from the command line.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi
from segment_anything import SamPredictor
from segment_anything.modeling import Sam
from segment_anything.utils.transforms import ResizeLongestSide

from .._utils import warmup_cosine
from ..data.phantom import TASKS, PhantomDataset
from ..metrics import dice
from ..vocab import SAM_PROMPT_MODES
from .sam import build_sam, load_sam, save_sam_checkpoint

__all__ = [
    "MIN_COMPONENT_FRACTION",
    "TOY_SAM_CONFIG",
    "TOY_SAM_PATH",
    "component_boxes",
    "off_target_box",
    "evaluate_toy_sam",
    "predict_boxes",
    "train_toy_sam",
]

#: build_sam's config for the toy SAM (segment_anything's classes, shrunk).
TOY_SAM_CONFIG: dict[str, Any] = {
    "image_size": 256,
    "patch_size": 16,
    "encoder_embed_dim": 160,
    "encoder_depth": 4,
    "encoder_num_heads": 4,
    "encoder_global_attn_indexes": [1, 3],
    "window_size": 8,
    "mlp_ratio": 4.0,
    "prompt_embed_dim": 128,
    "decoder_depth": 2,
    "decoder_mlp_dim": 512,
    "decoder_num_heads": 4,
    "iou_head_hidden_dim": 128,
    "mask_in_chans": 16,
}
TOY_SAM_PATH = Path(__file__).resolve().parent.parent / "weights" / "toy_sam.pt"
#: Connected components below this fraction of the mask's area get no box prompt.
MIN_COMPONENT_FRACTION = 0.02

# Non-square phantom sizes drawn for a share of the training images (padding, scale changes).
_ODD_SIZES: tuple[tuple[int, int], ...] = (
    (224, 288), (288, 224), (256, 320), (320, 256), (200, 300), (300, 200), (192, 256), (256, 192),
)
_ODD_SHARE = 0.3


# ============================================================================================
# boxes and scores


def component_boxes(
    mask: np.ndarray, min_fraction: float = MIN_COMPONENT_FRACTION
) -> list[np.ndarray]:
    """SAM boxes ``[x0, y0, x1, y1]`` (inclusive pixel coordinates) of ``mask``'s components.

    One box per 8-connected component holding at least ``min_fraction`` of the mask's pixels,
    sorted left to right (the X-ray's two lungs give two boxes).
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {mask.shape}")
    lab, n = ndi.label(mask, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return []
    sizes = np.bincount(lab.ravel())[1:]
    keep = sizes >= min_fraction * sizes.sum()
    boxes = []
    for k, sl in enumerate(ndi.find_objects(lab)):
        if sl is not None and keep[k]:
            boxes.append(np.array([sl[1].start, sl[0].start, sl[1].stop - 1, sl[0].stop - 1],
                                  dtype=float))
    return sorted(boxes, key=lambda b: (b[0], b[1]))


def _jitter_box(
    box: np.ndarray, rng: np.random.Generator, frac: float, cap: float, hw: tuple[int, int]
) -> np.ndarray:
    """``box`` with each coordinate moved by N(0, frac * side), clipped to +-cap, kept valid."""
    if frac <= 0:
        return box.astype(float)
    w, h = box[2] - box[0] + 1, box[3] - box[1] + 1
    sd = frac * np.array([w, h, w, h], dtype=float)
    noise = np.clip(rng.normal(0.0, 1.0, 4) * sd, -cap, cap)
    b = box.astype(float) + noise
    b[[0, 2]] = np.clip(b[[0, 2]], 0, hw[1] - 1)
    b[[1, 3]] = np.clip(b[[1, 3]], 0, hw[0] - 1)
    if b[2] - b[0] < 2:
        b[0], b[2] = max(0.0, b[0] - 1), min(hw[1] - 1.0, b[2] + 1)
    if b[3] - b[1] < 2:
        b[1], b[3] = max(0.0, b[1] - 1), min(hw[0] - 1.0, b[3] + 1)
    return b


# ============================================================================================
# training data


@dataclass
class _Item:
    """One preprocessed training image: the resized grey canvas and its object components."""

    canvas: np.ndarray  # (S, S) uint8, content top-left, zero padding (as SamPredictor pads)
    hw: tuple[int, int]  # size of the content after ResizeLongestSide
    comps: np.ndarray  # (S, S) uint8 labels: 1..n_targets targets, then decoys (0 = neither)
    boxes: list[np.ndarray]  # inclusive xyxy per component, same order as the labels
    n_targets: int
    task: str


def _resize_mask(mask: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    m = torch.from_numpy(np.asarray(mask, dtype=np.float32))[None, None]
    return F.interpolate(m, size=hw, mode="bilinear", align_corners=False)[0, 0].numpy() > 0.5


def _prepare(
    sample_rgb: np.ndarray, mask: np.ndarray, decoys: np.ndarray | None, task: str, size: int
) -> _Item | None:
    """Resize as SamPredictor does; label the target's components, then the decoys' (cysts,
    sinuses, ...: objects a box can pick out instead of the target)."""
    tf = ResizeLongestSide(size)
    img = tf.apply_image(sample_rgb)  # exactly SamPredictor.set_image's resize
    h, w = img.shape[:2]
    canvas = np.zeros((size, size), dtype=np.uint8)
    canvas[:h, :w] = img[..., 0]
    comps = np.zeros((size, size), dtype=np.uint8)
    boxes: list[np.ndarray] = []
    target = _resize_mask(mask, (h, w))
    layers = [(target, MIN_COMPONENT_FRACTION, 0)]
    if decoys is not None and np.any(decoys):
        layers.append((_resize_mask(decoys, (h, w)) & ~target, 0.0, 12))
    n_targets = 0
    for layer, (m, min_fraction, min_px) in enumerate(layers):
        lab, n = ndi.label(m, structure=np.ones((3, 3), dtype=bool))
        if n == 0:
            continue
        sizes = np.bincount(lab.ravel())[1:]
        for k, sl in enumerate(ndi.find_objects(lab)):
            if sl is None or sizes[k] < max(min_px, min_fraction * sizes.sum()):
                continue
            comps[:h, :w][lab == k + 1] = len(boxes) + 1
            boxes.append(np.array([sl[1].start, sl[0].start, sl[1].stop - 1, sl[0].stop - 1],
                                  dtype=float))
        if layer == 0:
            n_targets = len(boxes)
    if not boxes or len(boxes) > 250:
        return None
    return _Item(canvas, (h, w), comps, boxes, n_targets, task)


def _training_set(
    n_per_task: int, seed: int, size: int, log: Callable[[str], None]
) -> list[_Item]:
    """Phantoms of the "train" split, ~30 % of them non-square (normals only for their decoys)."""
    items: list[_Item] = []
    rng = np.random.default_rng([seed, 7])
    for task in TASKS:
        t0, count, i = time.time(), 0, 0
        square = PhantomDataset(task, 10 * n_per_task + 10, seed, size, "train")
        while count < n_per_task:
            ds = square
            if rng.random() < _ODD_SHARE:
                hw = _ODD_SIZES[int(rng.integers(len(_ODD_SIZES)))]
                ds = PhantomDataset(task, 10 * n_per_task + 10, seed, hw, "train")
            s = ds[i]
            i += 1
            item = _prepare(s.rgb, s.mask, s.meta.get("decoy_mask"), task, size)
            if item is not None:
                items.append(item)
                count += 1
        log(f"toy SAM: {count} {task} training images in {time.time() - t0:.1f} s")
    return items


# ============================================================================================
# model pieces used in training


def _decode(
    sam: Sam, emb: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """All 4 mask logits and IoU predictions for B images with one prompt each.

    The same computation as ``MaskDecoder.predict_masks``, which expects one image and repeats
    it per prompt; here image ``b`` goes with prompt ``b`` so the batch runs in one call.
    """
    md = sam.mask_decoder
    b = emb.shape[0]
    out = torch.cat([md.iou_token.weight, md.mask_tokens.weight], dim=0)
    tokens = torch.cat([out.unsqueeze(0).expand(b, -1, -1), sparse], dim=1)
    src = emb + dense
    pos = sam.prompt_encoder.get_dense_pe().expand(b, -1, -1, -1)
    _, c, h, w = src.shape
    hs, src = md.transformer(src, pos, tokens)
    iou_out = hs[:, 0, :]
    mask_out = hs[:, 1 : 1 + md.num_mask_tokens, :]
    up = md.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
    hyper = torch.stack(
        [md.output_hypernetworks_mlps[i](mask_out[:, i, :]) for i in range(md.num_mask_tokens)],
        dim=1,
    )
    _, cu, hu, wu = up.shape
    masks = (hyper @ up.reshape(b, cu, hu * wu)).reshape(b, -1, hu, wu)
    return masks, md.iou_prediction_head(iou_out)


def _focal(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25) -> torch.Tensor:
    """Sigmoid focal loss (gamma 2), mean over pixels: one value per mask."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    pt = p * target + (1 - p) * (1 - target)
    a = alpha * target + (1 - alpha) * (1 - target)
    return (a * ce * (1 - pt) ** 2).flatten(-2).mean(-1)


def _soft_dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    p = torch.sigmoid(logits).flatten(-2)
    t = target.flatten(-2)
    return 1 - (2 * (p * t).sum(-1) + 1) / (p.sum(-1) + t.sum(-1) + 1)


def _hard_iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    p = (logits > 0).float().flatten(-2)
    t = target.flatten(-2)
    inter = (p * t).sum(-1)
    union = p.sum(-1) + t.sum(-1) - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


@dataclass
class _Prompt:
    kind: str  # "box", "points" or "box+points"
    box: np.ndarray | None
    points: np.ndarray | None  # (k, 2) x, y
    labels: np.ndarray | None  # (k,) 1 positive, 0 negative


def _sample_points(
    comp: np.ndarray, box: np.ndarray, hw: tuple[int, int], k: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """First point positive (uniform inside the component); the others positive or negative
    (negatives outside the component, inside its box grown by 30 %)."""
    ys, xs = np.nonzero(comp)
    pts, labels = [], []
    for j in range(k):
        positive = j == 0 or rng.random() < 0.5
        if not positive:
            bw, bh = box[2] - box[0] + 1, box[3] - box[1] + 1
            x0, x1 = max(0, int(box[0] - 0.3 * bw)), min(hw[1] - 1, int(box[2] + 0.3 * bw))
            y0, y1 = max(0, int(box[1] - 0.3 * bh)), min(hw[0] - 1, int(box[3] + 0.3 * bh))
            for _ in range(20):
                x, y = int(rng.integers(x0, x1 + 1)), int(rng.integers(y0, y1 + 1))
                if not comp[y, x]:
                    pts.append((x, y))
                    labels.append(0)
                    break
            else:
                positive = True
        if positive:
            t = int(rng.integers(len(xs)))
            pts.append((xs[t], ys[t]))
            labels.append(1)
    return np.array(pts, dtype=float), np.array(labels, dtype=float)


def _make_prompt(
    comp: np.ndarray, box: np.ndarray, hw: tuple[int, int], rng: np.random.Generator,
    jitter: float, cap: float,
) -> _Prompt:
    r = rng.random()
    if r < 0.6:
        return _Prompt("box", _jitter_box(box, rng, jitter, cap, hw), None, None)
    if r < 0.85:
        pts, labels = _sample_points(comp, box, hw, int(rng.integers(1, 4)), rng)
        return _Prompt("points", None, pts, labels)
    pts, labels = _sample_points(comp, box, hw, int(rng.integers(1, 3)), rng)
    return _Prompt("box+points", _jitter_box(box, rng, jitter, cap, hw), pts, labels)


def _augment(canvas: np.ndarray, hw: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Gain, gamma and offset jitter of the content (the padding stays zero)."""
    h, w = hw
    x = canvas[:h, :w].astype(np.float32) / 255.0
    x = x ** float(np.exp(rng.uniform(-0.25, 0.25)))
    x = x * float(rng.uniform(0.8, 1.2)) + float(rng.uniform(-0.05, 0.05))
    out = np.zeros_like(canvas, dtype=np.float32)
    out[:h, :w] = np.clip(x, 0.0, 1.0) * 255.0
    return np.rint(out)


def _background_box(
    objects: np.ndarray, hw: tuple[int, int], rng: np.random.Generator
) -> np.ndarray | None:
    """A random box covering almost no object (at most 5 % of its area), or None."""
    h, w = hw
    for _ in range(20):
        bw = int(rng.integers(8, max(9, w // 2)))
        bh = int(rng.integers(8, max(9, h // 2)))
        if bw >= w or bh >= h:
            continue
        x0, y0 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
        if objects[y0 : y0 + bh, x0 : x0 + bw].sum() <= 0.05 * bw * bh:
            return np.array([x0, y0, x0 + bw - 1, y0 + bh - 1], dtype=float)
    return None


def _batch(
    sam: Sam, items: Sequence[_Item], idx: np.ndarray, rng: np.random.Generator,
    jitter: float, cap: float,
) -> tuple[torch.Tensor, torch.Tensor, list[_Prompt]]:
    """Images, targets and prompts: ~68 % the target (a lesion, one lung), ~20 % a decoy
    (the object in that box), ~12 % a box on no object (target: what little lies in it)."""
    size = sam.image_encoder.img_size
    imgs = np.zeros((len(idx), size, size), dtype=np.float32)
    targets = np.zeros((len(idx), size, size), dtype=np.float32)
    prompts = []
    for b, i in enumerate(idx):
        it = items[int(i)]
        h, w = it.hw
        canvas, comps = it.canvas, it.comps
        boxes = [bx.copy() for bx in it.boxes]
        if rng.random() < 0.5:  # flip the content horizontally (padding stays right/bottom)
            canvas, comps = canvas.copy(), comps.copy()
            canvas[:h, :w] = canvas[:h, :w][:, ::-1]
            comps[:h, :w] = comps[:h, :w][:, ::-1]
            for bx in boxes:
                bx[[0, 2]] = (w - 1) - bx[[2, 0]]
        imgs[b] = _augment(canvas, it.hw, rng)
        n_decoys = len(boxes) - it.n_targets
        r = rng.random()
        prompt = None
        if r < 0.12 or (it.n_targets == 0 and n_decoys == 0):
            objects = comps > 0
            bg = _background_box(objects[:h, :w], it.hw, rng)
            if bg is not None:
                x0, y0, x1, y1 = (int(v) for v in bg)
                targets[b, y0 : y1 + 1, x0 : x1 + 1] = objects[y0 : y1 + 1, x0 : x1 + 1]
                prompt = _Prompt("box", bg, None, None)
        if prompt is None:
            if it.n_targets == 0 or (n_decoys > 0 and r < 0.32):
                k = it.n_targets + int(rng.integers(n_decoys))
            else:
                k = int(rng.integers(it.n_targets))
            comp = comps == k + 1
            targets[b] = comp
            prompt = _make_prompt(comp, boxes[k], it.hw, rng, jitter, cap)
        prompts.append(prompt)
    x = torch.from_numpy(imgs)[:, None].expand(-1, 3, -1, -1)
    # Sam.preprocess normalises and pads; the content already sits top-left, so normalise it and
    # zero the padding, which is what preprocess(unpadded image) yields.
    x = (x - sam.pixel_mean) / sam.pixel_std
    valid = torch.zeros(len(idx), 1, size, size)
    for b, i in enumerate(idx):
        h, w = items[int(i)].hw
        valid[b, :, :h, :w] = 1
    return x * valid, torch.from_numpy(targets)[:, None], prompts


def _prompt_tensors(prompts: Sequence[_Prompt]) -> tuple[Any, Any]:
    boxes = None
    if prompts[0].box is not None:
        boxes = torch.tensor(np.stack([p.box for p in prompts]), dtype=torch.float32)
    points = None
    if prompts[0].points is not None:
        k = max(len(p.points) for p in prompts)
        coords = np.zeros((len(prompts), k, 2), dtype=np.float32)
        labels = -np.ones((len(prompts), k), dtype=np.float32)  # -1: "not a point" padding
        for j, p in enumerate(prompts):
            coords[j, : len(p.points)] = p.points
            labels[j, : len(p.labels)] = p.labels
        points = (torch.from_numpy(coords), torch.from_numpy(labels))
    return points, boxes


def _loss(
    sam: Sam, emb: torch.Tensor, target: torch.Tensor, prompts: Sequence[_Prompt],
    focal_weight: float, dice_weight: float, iou_weight: float,
) -> tuple[torch.Tensor, float]:
    """Summed loss of a group of samples sharing one prompt kind; also the mean hard IoU."""
    points, boxes = _prompt_tensors(prompts)
    sparse, dense = sam.prompt_encoder(points=points, boxes=boxes, masks=None)
    low, iou_pred = _decode(sam, emb, sparse, dense)
    size = sam.image_encoder.img_size
    multi = prompts[0].kind == "points"
    sl = slice(1, None) if multi else slice(0, 1)
    logits = F.interpolate(low[:, sl], (size, size), mode="bilinear", align_corners=False)
    iou_pred = iou_pred[:, sl]
    t = target.expand_as(logits)
    per_mask = focal_weight * _focal(logits, t) + dice_weight * _soft_dice(logits, t)
    with torch.no_grad():
        iou = _hard_iou(logits, t)
    iou_loss = ((iou_pred - iou) ** 2).mean(-1)
    best = per_mask.min(dim=1).values if multi else per_mask[:, 0]
    chosen = iou.gather(1, per_mask.argmin(dim=1, keepdim=True))[:, 0] if multi else iou[:, 0]
    return (best + iou_weight * iou_loss).sum(), float(chosen.mean())


# ============================================================================================
# training


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """``torch.set_num_threads(n)`` for the block, restored afterwards."""
    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


# The settings that produced the shipped medclipsam/weights/toy_sam.pt (scripts/train_toy_models.py).
TRAINING_DEFAULTS: dict[str, Any] = {"steps": 1500, "batch_size": 16, "lr": 8e-4, "seed": 0, "n_train_per_task": 500}


def train_toy_sam(
    out_path: str | Path = TOY_SAM_PATH,
    *,
    steps: int,
    batch_size: int = 16,
    lr: float = 8e-4,
    weight_decay: float = 0.05,
    warmup: int = 100,
    seed: int = 0,
    threads: int = 1,
    n_train_per_task: int = 500,
    box_jitter: float = 0.1,
    box_jitter_cap: float = 10.0,
    focal_weight: float = 20.0,
    dice_weight: float = 1.0,
    iou_weight: float = 1.0,
    config: dict[str, Any] | None = None,
    half: bool = True,
    init: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train the toy SAM on phantom images of all tasks and save it to ``out_path``.

    See the module docstring for the recipe. ``half`` stores the weights in float16 (half the
    file; ``load_sam`` loads them into float32 modules). ``init`` warm-starts from a checkpoint
    of the same architecture (continued training). Returns a summary (steps, seconds,
    final loss, parameter count, path).
    """
    if steps < 1 or batch_size < 1 or n_train_per_task < 1:
        raise ValueError("steps, batch_size and n_train_per_task must be positive")
    cfg = dict(TOY_SAM_CONFIG if config is None else config)
    with _torch_threads(threads):
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        t_start = time.time()
        size = int(cfg["image_size"])
        items = _training_set(n_train_per_task, seed, size, log)
        sam = build_sam(cfg, checkpoint=init)
        sam.train()
        n_params = sum(p.numel() for p in sam.parameters())
        log(f"toy SAM: {n_params / 1e6:.2f} M parameters, {len(items)} training images")
        decay = [p for n, p in sam.named_parameters() if p.ndim > 1 and "pos" not in n]
        no_decay = [p for n, p in sam.named_parameters() if not (p.ndim > 1 and "pos" not in n)]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0}],
            lr=lr, betas=(0.9, 0.999),
        )

        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, partial(warmup_cosine, warmup=warmup, total=steps, floor=0.02)
        )
        t_train = time.time()
        run_loss, run_iou, run_n = 0.0, 0.0, 0
        loss_value = float("nan")
        for step in range(steps):
            idx = rng.integers(len(items), size=batch_size)
            x, target, prompts = _batch(sam, items, idx, rng, box_jitter, box_jitter_cap)
            emb = sam.image_encoder(x)
            total = torch.zeros(())
            ious = []
            for kind in SAM_PROMPT_MODES:
                sel = [j for j, p in enumerate(prompts) if p.kind == kind]
                if not sel:
                    continue
                ix = torch.tensor(sel)
                part, miou = _loss(sam, emb[ix], target[ix], [prompts[j] for j in sel],
                                   focal_weight, dice_weight, iou_weight)
                total = total + part
                ious.append((miou, len(sel)))
            loss = total / batch_size
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(sam.parameters(), 1.0)
            opt.step()
            sched.step()
            loss_value = float(loss.detach())
            run_loss += loss_value
            run_iou += sum(m * n for m, n in ious) / batch_size
            run_n += 1
            if (step + 1) % 100 == 0 or step + 1 == steps:
                el = time.time() - t_train
                log(f"toy SAM step {step + 1}/{steps}: loss {run_loss / run_n:.4f}, "
                    f"IoU {run_iou / run_n:.3f}, lr {sched.get_last_lr()[0]:.2e}, "
                    f"{el / (step + 1):.2f} s/step, {el:.0f} s")
                run_loss, run_iou, run_n = 0.0, 0.0, 0
        sam.eval()
        seconds = time.time() - t_start
        to_save = copy.deepcopy(sam).half() if half else sam
        path = save_sam_checkpoint(
            to_save, out_path, arch=cfg,
            trained_on=f"phantom world {list(TASKS)}, split 'train', {len(items)} images",
            steps=int(steps), seed=int(seed), seconds=round(seconds, 1), batch_size=int(batch_size),
            lr=float(lr), dtype="float16" if half else "float32",
            init=None if init is None else Path(init).name,
        )
        log(f"toy SAM saved to {path} ({Path(path).stat().st_size / 1e6:.2f} MB, {seconds:.0f} s)")
        return {
            "path": str(path), "steps": int(steps), "seconds": seconds, "final_loss": loss_value,
            "parameters": n_params, "n_train": len(items),
        }


# ============================================================================================
# evaluation


def off_target_box(mask: np.ndarray, box: np.ndarray) -> np.ndarray:
    """A box of half ``box``'s size (at least 12 px a side) that covers the fewest mask pixels,
    as close to the image centre as possible: inside the anatomy, away from the target."""
    h, w = mask.shape
    bw, bh = max(12, int((box[2] - box[0]) / 2)), max(12, int((box[3] - box[1]) / 2))
    cover = np.lib.stride_tricks.sliding_window_view(mask, (bh, bw)).sum(axis=(2, 3))
    ys, xs = np.mgrid[: cover.shape[0], : cover.shape[1]]
    dist = (ys + bh / 2 - h / 2) ** 2 + (xs + bw / 2 - w / 2) ** 2
    y, x = np.unravel_index(np.lexsort((dist.ravel(), cover.ravel()))[0], cover.shape)
    return np.array([x, y, x + bw - 1, y + bh - 1], dtype=float)


def evaluate_toy_sam(
    predictor: SamPredictor,
    *,
    n_per_task: int = 50,
    seed: int = 0,
    size: int | tuple[int, int] = 256,
    box_noise: float = 0.0,
    tasks: Sequence[str] = TASKS,
    split: str = "test",
    off_target: bool = False,
) -> dict[str, float]:
    """Mean Dice per task on held-out phantoms (split ``"test"``) with ground-truth box prompts.

    Uses ``n_per_task`` images with a non-empty mask per task; each image is set once and
    prompted with one box per connected component (:func:`component_boxes`; both lungs in one
    batched ``predict_torch`` call) and the masks are unioned. ``box_noise`` jitters each box
    coordinate by N(0, box_noise x side) (clipped at 3 x box_noise x the image's longer side),
    reproducibly from ``seed``. ``off_target=True`` prompts instead with one
    :func:`off_target_box` beside the first component (the model must follow the box: Dice
    should collapse).
    """
    rng = np.random.default_rng([seed, 99])
    out: dict[str, float] = {}
    for task in tasks:
        ds = PhantomDataset(task, 4 * n_per_task + 10, seed, size, split)
        scores: list[float] = []
        for i in range(len(ds)):
            if len(scores) >= n_per_task:
                break
            if ds.label_of(i) == "normal":
                continue
            s = ds[i]
            boxes = component_boxes(s.mask)
            if not boxes:
                continue
            hw = s.mask.shape
            if off_target:
                boxes = [off_target_box(s.mask, boxes[0])]
            elif box_noise > 0:
                boxes = [_jitter_box(b, rng, box_noise, 3 * box_noise * max(hw), hw)
                         for b in boxes]
            predictor.set_image(s.rgb)
            pred = predict_boxes(predictor, np.stack(boxes))
            scores.append(dice(pred, s.mask))
        out[task] = float(np.mean(scores)) if scores else float("nan")
    return out


@torch.no_grad()
def predict_boxes(predictor: SamPredictor, boxes: np.ndarray) -> np.ndarray:
    """Union of the single-mask predictions for ``boxes`` ((N, 4) xyxy in image pixels), made
    in one batched ``predict_torch`` call on the image already set in ``predictor``."""
    boxes = np.asarray(boxes, dtype=float).reshape(-1, 4)
    tb = predictor.transform.apply_boxes(boxes, predictor.original_size)
    tb = torch.as_tensor(tb, dtype=torch.float32, device=predictor.device)
    masks, _, _ = predictor.predict_torch(None, None, boxes=tb, multimask_output=False)
    return masks[:, 0].any(dim=0).cpu().numpy()



def main(argv: list[str] | None = None) -> int:
    """``python -m medclipsam.models.toy_sam``: train the toy SAM and report its Dice."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=TOY_SAM_PATH)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=8e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n-train-per-task", type=int, default=500)
    ap.add_argument("--init", type=Path, default=None, help="warm-start from this checkpoint")
    ap.add_argument("--eval-per-task", type=int, default=30, help="0 skips the evaluation")
    args = ap.parse_args(argv)
    info = train_toy_sam(args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                         seed=args.seed, threads=args.threads,
                         n_train_per_task=args.n_train_per_task, init=args.init)
    if args.eval_per_task > 0:
        pred = load_sam(info["path"], device="cpu")
        print("Dice with ground-truth boxes:", evaluate_toy_sam(pred, n_per_task=args.eval_per_task))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
