"""The package's one image rule (medclipsam.data.convert), and that every consumer follows it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from medclipsam.config import WeakConfig
from medclipsam.data.convert import apply_window, as_array, to_uint8, to_unit_float
from medclipsam.data.io import load_picture, read_image, write_image
from medclipsam.models.clip import prepare_image
from medclipsam.segmenter import build_unet, predict_probabilities
from medclipsam.viz import overlay


def _scan16(h: int = 64, w: int = 64) -> np.ndarray:
    """A 16-bit 'scan': a smooth body in 1000..5000 and a few hot pixels at 65535 (0.1 %)."""
    yy, xx = np.mgrid[0:h, 0:w]
    body = 1000 + 4000 * (0.5 + 0.5 * np.sin(xx / 7.0) * np.cos(yy / 11.0))
    img = body.astype(np.uint16)
    img.flat[:: 1000] = 65535
    return img


def _percentile_picture(a: np.ndarray) -> np.ndarray:
    """The documented rule, computed independently: 0.5 / 99.5 percentiles onto 0..255."""
    lo, hi = np.percentile(a.astype(np.float64), (0.5, 99.5))
    return np.round(np.clip((a - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# the rule


def test_uint8_is_kept_and_a_picture_is_not_copied():
    g = np.array([[0, 128], [255, 7]], np.uint8)
    rgb = to_uint8(g)
    assert rgb.shape == (2, 2, 3) and rgb[1, 0].tolist() == [255] * 3
    assert to_uint8(rgb) is rgb  # converting a picture again costs nothing
    np.testing.assert_array_equal(to_unit_float(g, "grey"), g / np.float32(255))


def test_floats_in_unit_range_are_kept_others_are_stretched():
    g = np.array([[0, 128], [255, 7]], np.uint8)
    assert np.array_equal(to_uint8(g / 255.0), to_uint8(g))
    f = np.array([[0.0, 0.25], [0.5, 1.0]], np.float32)
    np.testing.assert_array_equal(to_unit_float(f, "grey"), f)
    assert to_uint8(np.array([[100, 300]], np.uint16))[0, :, 0].tolist() == [0, 255]
    ct = np.array([[-1000.0, 0.0], [400.0, 3000.0]])  # CT units: outside [0, 1]
    assert to_uint8(ct, "grey").min() == 0 and to_uint8(ct, "grey").max() == 255


def test_sixteen_bit_uses_the_percentile_range_so_hot_pixels_do_not_darken_it():
    a = _scan16()
    np.testing.assert_array_equal(to_uint8(a, "grey"), _percentile_picture(a))
    assert to_uint8(a, "grey").mean() > 60  # divided by 65535 it would be ~12: almost black


def test_constant_images_become_zero_and_nan_counts_as_zero():
    for arr in (np.full((3, 4), 7, np.uint16), np.full((3, 4), 2.5), np.zeros((3, 4), np.int32)):
        out = to_unit_float(arr)
        assert np.isfinite(out).all() and not out.any()
    nan = np.array([[np.nan, 2.0], [4.0, np.inf]])
    assert np.isfinite(to_unit_float(nan)).all()


def test_layouts_bool_and_alpha():
    assert to_uint8(np.array([[True, False]]))[0, :, 1].tolist() == [255, 0]
    assert to_uint8(np.zeros((2, 2, 1), np.uint8)).shape == (2, 2, 3)
    rgba = np.zeros((1, 2, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[0, :, 3] = [255, 0]  # opaque, then fully transparent: composited on black
    assert to_uint8(rgba)[0, :, 0].tolist() == [200, 0]
    grey_alpha = np.array([[[100, 255], [100, 0]]], np.uint8)
    assert to_uint8(grey_alpha, "grey").tolist() == [[100, 0]]
    colour = np.zeros((1, 1, 3), np.uint8)
    colour[0, 0] = (255, 0, 0)
    assert to_uint8(colour, "grey").tolist() == [[76]]  # 0.299 * 255, the luma of pure red
    with pytest.raises(ValueError, match="must be"):
        to_uint8(np.zeros((2, 2, 5)))
    with pytest.raises(ValueError, match="numeric"):
        to_uint8(np.array([["a", "b"]]))
    with pytest.raises(TypeError, match="NumPy array, PIL image or torch tensor"):
        to_uint8({"not": "an image"})


def test_torch_tensors_are_channels_first():
    rgb = np.random.default_rng(0).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    t = torch.from_numpy(rgb).permute(2, 0, 1)
    np.testing.assert_array_equal(to_uint8(t), rgb)
    np.testing.assert_array_equal(to_uint8(t[:1]), np.repeat(rgb[..., :1], 3, axis=2))
    np.testing.assert_array_equal(to_unit_float(t.float() / 255), rgb / np.float32(255))


@pytest.mark.parametrize(
    ("mode", "array"),
    [
        ("I;16", _scan16(8, 12)),
        ("I", _scan16(8, 12).astype(np.int32) - 3000),
        ("F", _scan16(8, 12).astype(np.float32) / 7.0),
        ("L", np.arange(96, dtype=np.uint8).reshape(8, 12)),
    ],
)
def test_pil_images_keep_their_own_values(mode, array):
    pil = Image.fromarray(array, mode=mode) if mode != "I;16" else Image.fromarray(array)
    assert pil.mode == mode
    np.testing.assert_array_equal(as_array(pil), array)
    np.testing.assert_array_equal(to_uint8(pil), to_uint8(array))
    if mode != "L":  # convert("RGB") saturates these to white; the rule does not
        assert 0 < to_uint8(pil).mean() < 255


def test_pil_colour_modes():
    rgb = np.random.default_rng(1).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    np.testing.assert_array_equal(to_uint8(Image.fromarray(rgb)), rgb)
    bits = Image.fromarray(np.array([[0, 255]], np.uint8)).convert("1")
    assert to_uint8(bits, "grey").tolist() == [[0, 255]]
    pal = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=256)
    assert to_uint8(pal).shape == (4, 5, 3)


def test_window():
    v = np.array([[0, 4000, 4500, 5000], [6000, 9000, 65535, 5500]], np.uint16)
    np.testing.assert_array_equal(apply_window(v, 5000, 2000),
                                  [[0, 0, 64, 128], [255, 255, 255, 191]])
    with pytest.raises(ValueError, match="width"):
        apply_window(v, 0, 0)


# --------------------------------------------------------------------------------------------
# every consumer sees the same picture


def _first_input(module: torch.nn.Module, run) -> torch.Tensor:
    """The first tensor ``module`` was called with while ``run()`` ran."""
    seen: list[torch.Tensor] = []

    def hook(_m, args):
        if not seen:
            seen.append(args[0].detach().clone())

    handle = module.register_forward_pre_hook(hook)
    try:
        run()
    finally:
        handle.remove()
    return seen[0]


def test_a_16bit_image_gives_the_same_picture_to_clip_sam_the_unet_and_the_figures(standin_pipe, tmp_path):
    scan = _scan16()
    path = write_image(tmp_path / "scan16.png", scan)
    forms = {"array": scan, "PIL I;16": Image.open(path), "16-bit PNG": str(path)}
    assert forms["PIL I;16"].mode == "I;16"
    picture = _percentile_picture(scan)
    picture_rgb = np.repeat(picture[..., None], 3, axis=2)
    np.testing.assert_array_equal(read_image(path), picture_rgb)

    clip, sam = standin_pipe.clip, standin_pipe.sam
    clip_ref = clip.prepare(picture_rgb)[0]
    sam_ref = _first_input(sam.model.image_encoder, lambda: sam.set_image(picture_rgb))
    unet = build_unet(WeakConfig(channels=(4, 8), strides=(2,))).eval()
    cfg = WeakConfig(size=scan.shape[0], channels=(4, 8), strides=(2,), precision="fp32")
    unet_ref = _first_input(unet, lambda: predict_probabilities(unet, [picture], cfg))
    std = float(picture.std() / 255.0)

    for name, image in forms.items():
        np.testing.assert_array_equal(load_picture(image), picture_rgb, err_msg=name)
        # CLIP and SAM inside the pipeline: it converts once, so both see exactly the picture.
        run = lambda image=image: standin_pipe.predict(image, "a lesion", saliency="gradcam",  # noqa: E731
                                                   postprocess="kmeans")
        seen_clip = _first_input(clip.model.visual, run)
        assert torch.equal(seen_clip[0], clip_ref), name
        standin_pipe.session._key = None  # make the session embed again, to see SAM's input
        assert torch.equal(_first_input(sam.model.image_encoder, run), sam_ref), name
        if name == "16-bit PNG":
            continue
        # CLIP's own preparation (at the image's size: no resampling) and the UNet take [0, 1]
        # floats, not quantised: the same picture within half an 8-bit level.
        mean = torch.tensor(clip.mean).view(3, 1, 1)
        sd = torch.tensor(clip.std).view(3, 1, 1)
        direct = prepare_image(image, scan.shape[0], "pad", clip.mean, clip.std)[0] * sd + mean
        assert (direct - torch.from_numpy(picture_rgb / 255.0).permute(2, 0, 1)).abs().max() \
            <= 0.5 / 255 + 1e-5, name
        seen_unet = _first_input(unet, lambda image=image: predict_probabilities(unet, [image], cfg))
        assert (seen_unet - unet_ref).abs().max() * std <= 1 / 255, name  # z-scored: within a level
        # The figure's RGB: the picture, not the image divided by 65535.
        assert np.abs(overlay(image).astype(int) - picture_rgb).max() <= 1, name
