"""Our CAMs against independent implementations: the pytorch-grad-cam library (ScoreCAM, GradCAM)
and a plain loop-by-loop gScoreCAM written here.

Conventions. pytorch-grad-cam's ScoreCAM upsamples the activation masks with
``nn.UpsamplingBilinear2d`` (corner-aligned, ``align_corners=True``) but resizes its final map with
cv2 (half-pixel centres); we use half-pixel centres throughout. For the exact comparison the
library's mask upsampler is swapped for a half-pixel one (the only change; the library's
normalisation ``(x - min) / (max - min + 1e-8)``, its softmax over the scores, its ReLU and its
final min-max + cv2 resize are kept). Its final min-max happens before the resize and ours after,
which is the same map because bilinear resizing commutes with affine rescaling. Tolerance: 1e-5
(float32 rounding, cv2 versus torch bilinear arithmetic).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cam_loops import loop_gscorecam
from open_clip.model import CLIP
from pytorch_grad_cam import GradCAM, ScoreCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from medclipsam.data.phantom import PROMPTS, PhantomDataset
from medclipsam.models import load_clip
from medclipsam.saliency import grad_cam, resolve_target_layer
from medclipsam.saliency.gscorecam import gscorecam

TOL = 1e-5


class ClipLogits(torch.nn.Module):
    """A CLIP as a one-class classifier: output [N, 1] = the image-text logit for the prompt, so
    that the library's ``ClassifierOutputTarget(0)`` is the CLIP logit."""

    def __init__(self, model: torch.nn.Module, text: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("text", F.normalize(text.detach().float(), dim=-1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        img = F.normalize(self.model.encode_image(x), dim=-1)
        return self.model.logit_scale.exp() * img @ self.text.T


class HalfPixelUpsample(torch.nn.Module):
    """Stand-in for the library's corner-aligned mask upsampler, with half-pixel centres."""

    def __init__(self, size) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)


@pytest.fixture(scope="module")
def toy_case():
    clip = load_clip("toy", device="cpu")
    ds = PhantomDataset("brain", 2, seed=3, size=224, split="test")
    x = torch.stack([clip.prepare(ds[i].rgb)[0] for i in range(2)])
    with torch.no_grad():
        text = clip.model.encode_text(clip.tokenize([PROMPTS["brain"]]))
    return clip.model, x, text


@pytest.fixture(scope="module")
def vit_case():
    """A small random-weight open_clip ViT with CLS pooling (hooked at the last block's ln_1)."""
    torch.manual_seed(0)
    vision = {"image_size": 64, "patch_size": 16, "width": 32, "layers": 2, "head_width": 16}
    text_cfg = {"context_length": 8, "vocab_size": 50, "width": 32, "heads": 2, "layers": 1}
    model = CLIP(embed_dim=16, vision_cfg=vision, text_cfg=text_cfg).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    text = torch.randn(1, 16, generator=torch.Generator().manual_seed(2))
    return model, x, text


def _library_scorecam(model, x, text, monkeypatch=None):
    target = resolve_target_layer(model)
    if monkeypatch is not None:
        monkeypatch.setattr(torch.nn, "UpsamplingBilinear2d", HalfPixelUpsample)
    try:
        cam = ScoreCAM(ClipLogits(model, text), [target.module], reshape_transform=target.to_grid)
        cam.batch_size = 64
        return cam(x, [ClassifierOutputTarget(0)] * len(x))
    finally:
        if monkeypatch is not None:
            monkeypatch.undo()


@pytest.mark.parametrize("case", ["toy_case", "vit_case"])
def test_gscorecam_with_all_channels_is_the_librarys_scorecam(case, request, monkeypatch):
    model, x, text = request.getfixturevalue(case)
    ours = gscorecam(model, x, text, k=None, weighting="selected").numpy()
    ref = _library_scorecam(model, x, text, monkeypatch)
    assert ours.shape == ref.shape == (len(x), *x.shape[-2:])
    assert np.abs(ours - ref).max() < TOL


def test_the_librarys_corner_aligned_masks_give_a_different_map(toy_case):
    """Why the upsampler had to be aligned: the mask convention alone moves the map visibly."""
    model, x, text = toy_case
    ours = gscorecam(model, x, text, k=None).numpy()
    ref = _library_scorecam(model, x, text)
    assert np.abs(ours - ref).max() > 0.05
    assert np.corrcoef(ours.ravel(), ref.ravel())[0, 1] > 0.8


@pytest.mark.parametrize("case", ["toy_case", "vit_case"])
def test_gradcam_is_the_librarys_gradcam(case, request):
    model, x, text = request.getfixturevalue(case)
    target = resolve_target_layer(model)
    ours = grad_cam(model, x, text.expand(len(x), -1)).numpy()
    cam = GradCAM(ClipLogits(model, text), [target.module], reshape_transform=target.to_grid)
    ref = cam(x, [ClassifierOutputTarget(0)] * len(x))
    assert np.abs(ours - ref).max() < TOL


@pytest.mark.parametrize("weighting", ["selected", "reference"])
@pytest.mark.parametrize("case", ["toy_case", "vit_case"])
def test_gscorecam_equals_a_plain_loop(case, weighting, request):
    model, x, text = request.getfixturevalue(case)
    k = 12
    ours = gscorecam(model, x, text, k=k, weighting=weighting, batch_size=5)
    for i in range(len(x)):
        ref = loop_gscorecam(model, x[i : i + 1], text, k, weighting=weighting)
        assert (ours[i] - ref).abs().max().item() < 1e-4
