"""An independent re-implementation of LiteMedSAM's official inference procedure, for tests.

It follows the steps of ``CVPR24_LiteMedSAM_infer.py`` (bowang-lab/MedSAM, branch LiteMedSAM) as
described in its source, written here from that description with OpenCV's ``INTER_AREA`` (the
official resize) and the model's three parts called directly, so that nothing of
:class:`medclipsam.models.litemedsam.LiteMedSamPredictor` or of segment_anything's
``SamPredictor`` is shared with the code under test:

1. grey images become three channels; the longest side is resized to 256 (``cv2.INTER_AREA``,
   new size rounded half up);
2. min-max to [0, 1] over the resized image;
3. zero padding at the bottom and right to 256 x 256;
4. the box (xyxy, original pixels) times ``256 / max(H, W)``;
5. encoder -> prompt encoder (box only) -> mask decoder (``multimask_output=False``);
6. the 256 x 256 logits cropped to the resized size, bilinearly upsampled to (H, W)
   (``align_corners=False``), sigmoid > 0.5.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi


def component_boxes(mask: np.ndarray, min_fraction: float = 0.02) -> list[np.ndarray]:
    """One inclusive xyxy box per connected component of ``mask``, largest first; components
    under ``min_fraction`` of the mask (specks) get none."""
    lab, _ = ndi.label(mask)
    total = max(int(mask.sum()), 1)
    found = []
    for i, sl in enumerate(ndi.find_objects(lab), start=1):
        size = int((lab[sl] == i).sum()) if sl is not None else 0
        if size >= min_fraction * total:
            ys, xs = sl
            found.append((size, np.array([xs.start, ys.start, xs.stop - 1, ys.stop - 1], float)))
    return [b for _, b in sorted(found, key=lambda t: -t[0])]


@torch.no_grad()
def official_masks(sam: torch.nn.Module, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(N, H, W) bool masks of LiteMedSAM (``sam``: the model's parts, e.g. a predictor's
    ``.model``) for ``boxes`` (N, 4) on ``image`` ((H, W) or (H, W, 3) uint8), by the official
    procedure."""
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=-1)
    h, w = img.shape[:2]
    scale = 256.0 / max(h, w)
    nh, nw = int(h * scale + 0.5), int(w * scale + 0.5)
    small = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA).astype(np.float64)
    small = (small - small.min()) / np.clip(small.max() - small.min(), 1e-8, None)
    padded = np.zeros((256, 256, 3))
    padded[:nh, :nw] = small
    x = torch.tensor(padded, dtype=torch.float32).permute(2, 0, 1)[None]
    dev = next(sam.parameters()).device
    emb = sam.image_encoder(x.to(dev))
    out = []
    for box in np.asarray(boxes, float).reshape(-1, 4):
        b = torch.tensor(box * scale, dtype=torch.float32, device=dev)[None, None]
        sparse, dense = sam.prompt_encoder(points=None, boxes=b, masks=None)
        logits, _ = sam.mask_decoder(
            image_embeddings=emb, image_pe=sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        logits = logits[:, :, :nh, :nw]
        up = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
        out.append((torch.sigmoid(up) > 0.5)[0, 0].cpu().numpy())
    return np.stack(out)
