"""The real-world model loading, offline: weight registry + downloader against a local HTTP
server, BiomedCLIP through its real hf-hub id from a cache folder written here, SAM with random
weights, CLIP checkpoints, and the letterbox geometry that maps saliency maps back to images."""

from __future__ import annotations

import hashlib
import time
import warnings

import numpy as np
import pytest
import torch
from hf_cache import BIOMEDCLIP_REPO, TEXT_REPO, use_hf_cache, write_biomedclip_cache
from httpserver import FileServer

from medclipsam.download import OfflineError
from medclipsam.models import clip as clip_mod
from medclipsam.models import registry
from medclipsam.models.clip import (
    CheckpointError,
    HubFilesMissingError,
    load_clip,
    prepare_image,
    save_clip_checkpoint,
    trim_padding,
)
from medclipsam.models.registry import (
    ManualDownloadError,
    WeightSpec,
    WeightVerificationError,
    weight_path,
)
from medclipsam.models.sam import (
    MedSamPredictor,
    SamCheckpointError,
    build_sam,
    load_sam,
    save_sam_checkpoint,
)

# --------------------------------------------------------------------------------------------
# registry + downloader


@pytest.fixture
def online(monkeypatch):
    """Downloads allowed (conftest switches offline mode on for the whole suite)."""
    monkeypatch.delenv("MEDCLIPSAM_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def _spec(url: str, data: bytes, **over) -> WeightSpec:
    fields = dict(
        name="tiny",
        filename="tiny_weights.pth",
        urls=[url],
        md5=hashlib.md5(data).hexdigest(),
        sha256_prefix=hashlib.sha256(data).hexdigest()[:6],
        size=len(data),
    )
    fields.update(over)
    return WeightSpec(**fields)


def test_registry_sam_entries_match_their_file_names():
    for arch in ("vit_b", "vit_l", "vit_h"):
        spec = registry.get_spec(f"sam_{arch}")
        suffix = spec.filename.rsplit("_", 1)[1].removesuffix(".pth")
        assert spec.urls == ["https://dl.fbaipublicfiles.com/segment_anything/" + spec.filename]
        assert spec.md5.startswith(suffix) and len(spec.md5) == 32
        assert spec.sha256 is None and spec.arch == arch
    medsam = registry.get_spec("medsam")
    assert medsam.filename == "medsam_vit_b.pth" and not medsam.urls and medsam.manual
    assert [s.name for s in registry.list_weights()] == [
        "sam_vit_b",
        "sam_vit_l",
        "sam_vit_h",
        "medsam",
    ]
    with pytest.raises(KeyError, match="sam_vit_b"):
        registry.get_spec("sam_vit_x")


def test_weight_path_downloads_verifies_and_then_uses_the_cache(tmp_path, online):
    data = bytes(range(256)) * 300
    with FileServer() as srv:
        route = srv.add("/w/tiny_weights.pth", data)
        spec = _spec(srv.url("/w/tiny_weights.pth"), data)
        path = weight_path("tiny", cache=tmp_path, spec=spec, progress=False)
        assert path == (tmp_path / "tiny_weights.pth").absolute()
        assert path.read_bytes() == data
        again = weight_path("tiny", cache=tmp_path, spec=spec, progress=False)
        assert again == path and len(route.requests) == 1  # second call: no network
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "tiny_weights.pth",
        "tiny_weights.pth.verified",
    ]


@pytest.mark.parametrize("bad", ["sha256_prefix", "md5"])
def test_weight_path_wrong_checksum_leaves_nothing_in_the_cache(tmp_path, online, bad):
    data = b"not the weights you are looking for" * 100
    real = hashlib.sha256(data).hexdigest()
    wrong = {
        "sha256_prefix": "0" * 6 if not real.startswith("000000") else "1" * 6,
        "md5": "0" * 32,
    }[bad]
    with FileServer() as srv:
        srv.add("/w.pth", data)
        spec = _spec(srv.url("/w.pth"), data, **{bad: wrong})
        with pytest.raises(WeightVerificationError, match="deleted") as info:
            weight_path("tiny", cache=tmp_path, spec=spec, progress=False)
    assert wrong in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_weight_path_offline_says_what_to_fetch_and_where(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDCLIPSAM_OFFLINE", "1")
    data = b"x" * 1000
    with FileServer() as srv:
        route = srv.add("/w.pth", data)
        spec = _spec(srv.url("/w.pth"), data)
        with pytest.raises(OfflineError) as info:
            weight_path("tiny", cache=tmp_path, spec=spec)
        assert route.requests == []
    msg = str(info.value)
    assert srv.url("/w.pth") in msg
    assert str((tmp_path / "tiny_weights.pth").absolute()) in msg
    assert spec.md5 in msg and "MEDCLIPSAM_OFFLINE" in msg
    assert list(tmp_path.iterdir()) == []


def test_weight_path_checks_a_file_put_there_by_hand(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDCLIPSAM_OFFLINE", "1")
    data = b"the real bytes" * 50
    spec = _spec("http://127.0.0.1:9/w.pth", data)
    dest = tmp_path / spec.filename
    dest.write_bytes(b"something else")
    with pytest.raises(WeightVerificationError, match="not the expected") as info:
        weight_path("tiny", cache=tmp_path, spec=spec)
    assert str(dest.absolute()) in str(info.value)
    dest.write_bytes(data)
    assert weight_path("tiny", cache=tmp_path, spec=spec) == dest.absolute()


def test_medsam_weights_need_a_manual_download(tmp_path):
    with pytest.raises(ManualDownloadError) as info:
        weight_path("medsam", cache=tmp_path)
    msg = str(info.value)
    assert "drive.google.com" in msg and str((tmp_path / "medsam_vit_b.pth").absolute()) in msg


def test_load_sam_offline_names_the_url_and_the_path(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDCLIPSAM_OFFLINE", "1")
    with pytest.raises(OfflineError) as info:
        load_sam("vit_b", cache=tmp_path, device="cpu")
    msg = str(info.value)
    assert "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth" in msg
    assert str((tmp_path / "sam_vit_b_01ec64.pth").absolute()) in msg
    with pytest.raises(ManualDownloadError, match="download=False"):
        load_sam("vit_b", cache=tmp_path, download=False)


# --------------------------------------------------------------------------------------------
# BiomedCLIP from a Hugging Face cache folder (real hf-hub id, random weights)


@pytest.fixture(scope="module")
def biomedclip(tmp_path_factory):
    root = write_biomedclip_cache(tmp_path_factory.mktemp("hf"))
    with pytest.MonkeyPatch.context() as mp:
        use_hf_cache(mp, root)
        start = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            clip = load_clip("biomedclip", device="cpu")
        seconds = time.perf_counter() - start  # about 8 s on a 2-core CPU
        yield clip, [str(w.message) for w in caught], seconds


def test_biomedclip_builds_from_the_hub_cache_with_random_weights(biomedclip):
    clip, messages, seconds = biomedclip
    assert clip.pretrained is False
    assert any("RANDOM weights" in m and BIOMEDCLIP_REPO in m for m in messages), messages
    assert clip.name == "biomedclip" and clip.source == "hf-hub:" + BIOMEDCLIP_REPO
    assert clip.image_size == 224 and clip.context_length == 256
    assert clip.mean == pytest.approx(clip_mod.OPENAI_CLIP_MEAN)
    assert clip.std == pytest.approx(clip_mod.OPENAI_CLIP_STD)
    assert seconds < 120


def test_biomedclip_encodes_images_and_texts(biomedclip):
    clip = biomedclip[0]
    tokens = clip.tokenize(["breast ultrasound lesion", "a chest x-ray"])
    assert tokens.shape == (2, 256) and tokens.dtype == torch.long
    assert tokens[0, 0].item() == 2 and tokens[0, 1:4].tolist() == [16, 17, 18]  # [CLS] words
    rng = np.random.default_rng(0)
    images = [
        rng.integers(0, 256, (90, 160, 3), dtype=np.uint8),
        rng.integers(0, 65535, (200, 120), dtype=np.uint16),
    ]
    with torch.no_grad():
        img = clip.encode_image(images)
        txt = clip.encode_text(["breast ultrasound lesion", "a chest x-ray"])
        logits = clip.model.logit_scale.exp() * img @ txt.T
    assert img.shape == (2, 512) and txt.shape == (2, 512)
    assert torch.allclose(img.norm(dim=-1), torch.ones(2), atol=1e-4)
    assert torch.isfinite(logits).all()


def test_biomedclip_image_tower_is_a_vit_b16_with_a_14x14_grid(biomedclip):
    clip = biomedclip[0]
    trunk = clip.model.visual.trunk
    assert type(trunk).__name__ == "VisionTransformer"
    assert tuple(trunk.patch_embed.grid_size) == (14, 14) and len(trunk.blocks) == 12
    x, geom = clip.prepare(np.zeros((64, 100), dtype=np.uint8))
    with torch.no_grad():
        tokens = trunk.forward_features(x[None])
    assert tokens.shape == (1, 197, 768)
    assert geom.image_size == (64, 100)


def test_biomedclip_without_the_hub_files_says_what_to_do(tmp_path, monkeypatch):
    use_hf_cache(monkeypatch, tmp_path / "empty")
    with pytest.raises(HubFilesMissingError) as info:
        load_clip("biomedclip", device="cpu")
    msg = str(info.value)
    assert BIOMEDCLIP_REPO in msg and "open_clip_config.json" in msg
    assert "HF_HUB_OFFLINE" in msg and f"hf download {BIOMEDCLIP_REPO}" in msg
    # Config present, text encoder repo absent: the error names the text encoder's repo.
    root = write_biomedclip_cache(tmp_path / "half", with_text_repo=False)
    use_hf_cache(monkeypatch, root)
    with pytest.raises(HubFilesMissingError, match=TEXT_REPO):
        load_clip("biomedclip", device="cpu")


# --------------------------------------------------------------------------------------------
# CLIP checkpoints (a tiny open_clip configuration)

TINY_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
TINY_PRE = {"size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}


def _tiny_model(seed: int) -> torch.nn.Module:
    from open_clip.model import CLIP

    torch.manual_seed(seed)
    return CLIP(**TINY_CFG).eval()


def _outputs(model, image, tokens):
    with torch.no_grad():
        return model.encode_image(image), model.encode_text(tokens)


def test_clip_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    model = _tiny_model(0)
    path = save_clip_checkpoint(
        model,
        tmp_path / "ckpt" / "tiny.pt",
        model_config=TINY_CFG,
        preprocess_cfg=TINY_PRE,
        epoch=3,
        note="round trip",
    )
    assert [p.name for p in path.parent.iterdir()] == ["tiny.pt"]  # no temporary left behind
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == clip_mod.CHECKPOINT_FORMAT and raw["meta"]["epoch"] == 3

    clip = load_clip(path, device="cpu")
    assert clip.name == "tiny" and clip.image_size == 32 and clip.context_length == 16
    assert clip.mean == (0.5, 0.5, 0.5) and clip.std == (0.25, 0.25, 0.25)
    image, _ = clip.prepare(np.arange(40 * 70, dtype=np.uint8).reshape(40, 70))
    tokens = clip.tokenize(["a lesion", "normal lungs"])
    assert tokens.shape == (2, 16)
    want = _outputs(model, image[None], tokens)
    got = _outputs(clip.model, image[None], tokens)
    assert all(torch.equal(a, b) for a, b in zip(want, got))
    # ... and again from the clip (what a fine-tuning loop saves).
    path2 = save_clip_checkpoint(clip, tmp_path / "again.pt", epoch=4)
    got2 = _outputs(load_clip(path2, device="cpu").model, image[None], tokens)
    assert all(torch.equal(a, b) for a, b in zip(want, got2))


def test_plain_state_dict_with_module_prefixes_loads_into_the_architecture(tmp_path):
    arch = save_clip_checkpoint(
        _tiny_model(0), tmp_path / "arch.pt", model_config=TINY_CFG, preprocess_cfg=TINY_PRE
    )
    other = _tiny_model(1)  # different weights: the plain file must win over arch.pt's
    sd = {"module." + k: v for k, v in other.state_dict().items()}
    torch.save({"epoch": 7, "state_dict": sd}, tmp_path / "finetuned.pt")  # open_clip training
    clip = load_clip(tmp_path / "finetuned.pt", arch=str(arch), device="cpu")
    image = torch.randn(1, 3, 32, 32)
    tokens = clip.tokenize("a lesion")
    want = _outputs(other, image, tokens)
    got = _outputs(clip.model, image, tokens)
    assert all(torch.equal(a, b) for a, b in zip(want, got))
    assert clip.pretrained and clip.name == "finetuned"


def test_bad_clip_checkpoints_give_clear_errors(tmp_path):
    path = save_clip_checkpoint(_tiny_model(0), tmp_path / "good.pt", model_config=TINY_CFG)
    blob = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match="cut.pt.*corrupt"):
        load_clip(tmp_path / "cut.pt", device="cpu")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="text.pt"):
        load_clip(tmp_path / "text.pt", device="cpu")
    sd = _tiny_model(0).state_dict()
    sd.pop("logit_scale")
    torch.save(sd, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match=r"partial.pt.*1 missing.*logit_scale"):
        load_clip(tmp_path / "partial.pt", arch=str(path), device="cpu")
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        load_clip(tmp_path / "nowhere.pt")


def test_open_clip_names_offline_give_clear_errors(tmp_path, monkeypatch):
    use_hf_cache(monkeypatch, tmp_path / "empty")
    with pytest.raises(HubFilesMissingError, match=r"ViT-B-16:openai weights.*network access"):
        load_clip("ViT-B-16:openai", device="cpu")
    with pytest.raises(ValueError, match="unknown CLIP model 'NoSuchModel'"):
        load_clip("NoSuchModel")


# --------------------------------------------------------------------------------------------
# SAM


@pytest.mark.heavy
def test_load_sam_vit_b_from_a_random_checkpoint_runs_the_predictor(tmp_path):
    torch.manual_seed(0)
    sam = build_sam("vit_b")
    sd = {k: v.half() for k, v in sam.state_dict().items()}  # fp16 halves the file (190 MB)
    torch.save(sd, tmp_path / "random_vit_b.pth")
    del sam
    predictor = load_sam(tmp_path / "random_vit_b.pth", device="cpu")
    assert type(predictor).__name__ == "SamPredictor"
    loaded = predictor.model.state_dict()["image_encoder.patch_embed.proj.weight"]
    assert torch.equal(loaded, sd["image_encoder.patch_embed.proj.weight"].float())
    del sd
    image = np.random.default_rng(0).integers(0, 256, (96, 160, 3), dtype=np.uint8)
    predictor.set_image(image)
    masks, scores, low_res = predictor.predict(box=np.array([20, 10, 120, 80]))
    assert masks.shape == (3, 96, 160) and masks.dtype == bool
    assert scores.shape == (3,) and low_res.shape == (3, 256, 256)


TINY_SAM = {
    "encoder_embed_dim": 32, "encoder_depth": 2, "encoder_num_heads": 2,
    "encoder_global_attn_indexes": [1], "image_size": 64, "window_size": 2,
    "prompt_embed_dim": 32, "decoder_mlp_dim": 64, "decoder_num_heads": 2,
    "iou_head_hidden_dim": 32,
}  # fmt: skip


def test_medsam_predictor_stretches_like_medsam(tmp_path):
    torch.manual_seed(0)
    path = save_sam_checkpoint(build_sam(TINY_SAM), tmp_path / "tiny_sam.pt", TINY_SAM, step=1)
    predictor = load_sam("medsam", checkpoint=path, device="cpu")
    assert isinstance(predictor, MedSamPredictor)
    # Boxes are scaled per axis to the 64 x 64 input (MedSAM stretches, SAM letterboxes).
    box = predictor.transform.apply_boxes(np.array([[10, 6, 50, 30]]), (30, 50))
    assert np.allclose(box, [[12.8, 12.8, 64.0, 64.0]])
    image = np.random.default_rng(0).integers(0, 4096, (30, 50), dtype=np.uint16)
    predictor.set_image(image)
    masks, scores, _ = predictor.predict(box=np.array([10, 6, 50, 30]))
    assert masks.shape == (1, 30, 50) and scores.shape == (1,)
    # The same file as a plain SAM: architecture from the checkpoint's sam_config.
    plain = load_sam(path, device="cpu")
    assert type(plain).__name__ == "SamPredictor" and plain.model.image_encoder.img_size == 64


def test_bad_sam_checkpoints_give_clear_errors(tmp_path):
    sam = build_sam(TINY_SAM)
    torch.save(sam.state_dict(), tmp_path / "unknown_arch.pth")
    with pytest.raises(SamCheckpointError, match=r"unknown_arch.pth.*width 32.*arch="):
        load_sam(tmp_path / "unknown_arch.pth", device="cpu")
    assert load_sam(tmp_path / "unknown_arch.pth", arch=TINY_SAM, device="cpu") is not None
    (tmp_path / "cut.pth").write_bytes((tmp_path / "unknown_arch.pth").read_bytes()[:1000])
    with pytest.raises(SamCheckpointError, match="cut.pth.*corrupt"):
        load_sam(tmp_path / "cut.pth", device="cpu")
    with pytest.raises(FileNotFoundError, match="neither a SAM model name"):
        load_sam(tmp_path / "missing.pth")


# --------------------------------------------------------------------------------------------
# letterbox geometry


def _marked_image(h: int, w: int, box: tuple[int, int, int, int]) -> np.ndarray:
    x0, y0, x1, y1 = box
    img = np.full((h, w), 40, dtype=np.uint8)
    img[y0:y1, x0:x1] = 220
    return img


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


@pytest.mark.parametrize("shape", [(90, 200), (230, 70), (64, 64)])
@pytest.mark.parametrize("mode", ["pad", "resize"])
def test_a_model_space_map_comes_back_at_the_right_place(shape, mode):
    h, w = shape
    box = (w // 2, h // 5, w // 2 + w // 4, h // 5 + h // 3)
    image = _marked_image(h, w, box)
    x, geom = prepare_image(image, 224, mode=mode)
    assert x.shape == (3, 224, 224)
    # A "saliency map" computed in model space: where the model input shows the bright region.
    unnorm = x[0] * clip_mod.OPENAI_CLIP_STD[0] + clip_mod.OPENAI_CLIP_MEAN[0]
    saliency = (unnorm > (40 + 220) / 2 / 255).float().numpy()
    back = geom.to_image(saliency)
    assert back.shape == (h, w)
    got = _bbox(back > 0.5)
    assert np.abs(np.subtract(got, box)).max() <= 2, (got, box)
    # The bounding box of the model-space map maps back to the same image box.
    assert np.abs(geom.box_to_image(_bbox(saliency > 0.5)) - box).max() <= 2


def test_pad_mode_keeps_the_whole_image_and_low_res_maps_cover_it():
    x, geom = prepare_image(np.full((50, 100, 3), 255, np.uint8), 224, mode="pad")
    assert geom.content_box == pytest.approx((0, 56, 224, 168))
    black = (0 - np.array(clip_mod.OPENAI_CLIP_MEAN)) / np.array(clip_mod.OPENAI_CLIP_STD)
    assert np.allclose(x[:, :56].mean(dim=(1, 2)).numpy(), black, atol=1e-5)  # padding
    grid = torch.zeros(14, 14)
    grid[:, 7:] = 1.0  # right half of a ViT-B/16 token grid
    back = geom.to_image(grid)
    assert isinstance(back, torch.Tensor) and back.shape == (50, 100)
    assert back[:, :45].max() == 0 and back[:, 55:].min() > 0.9999
    pts = np.array([[0, 0], [100, 50], [37.5, 12.25]])
    assert np.allclose(geom.points_to_image(geom.points_to_model(pts)), pts)


def test_crop_mode_matches_open_clip_and_fills_what_it_never_saw():
    image = _marked_image(100, 300, (10, 10, 40, 40))  # left edge: cut off by a centre crop
    x, geom = prepare_image(image, 100, mode="crop")
    assert geom.content_box == (0, 0, 100, 100)
    back = geom.to_image(np.ones((100, 100)), fill=-1.0)
    assert (back[:, :100] == -1).all() and (back[:, 100:200] == 1).all()
    assert (back[:, 200:] == -1).all()


def test_an_open_clip_model_by_name_builds_offline_with_random_weights():
    """Other open_clip architectures by name (here CLIP RN50, the gScoreCAM paper's family): with
    ``pretrained=False`` nothing is downloaded, and the clip prepares and encodes."""
    torch.manual_seed(0)
    clip = load_clip("RN50", pretrained=False, device="cpu")
    assert type(clip.model.visual).__name__ == "ModifiedResNet"
    assert clip.pretrained is False
    image = np.random.default_rng(0).integers(0, 256, (120, 200, 3), dtype=np.uint8)
    x, geom = clip.prepare(image)
    assert tuple(x.shape) == (3, 224, 224)
    with torch.no_grad():
        img_f = clip.model.encode_image(x[None])
        txt_f = clip.model.encode_text(clip.tokenize(["a chest x-ray", "lungs"]))
    assert img_f.shape == (1, 1024) and txt_f.shape == (2, 1024)
    assert torch.isfinite(img_f).all() and not torch.allclose(txt_f[0], txt_f[1])


def test_biomedclip_text_features_do_not_depend_on_trailing_padding(biomedclip):
    """Prompts are encoded without the context's trailing padding (a 3-word prompt uses a few of
    256 positions): the features must be those of the full, padded context."""
    clip = biomedclip[0]
    prompts = ["breast tumor", "a benign hypoechoic mass seen in a breast ultrasound image"]
    full = clip.tokenize(prompts)
    trimmed = trim_padding(clip.model, full)
    pad = clip.model.text.config.pad_token_id
    assert full.shape[1] == 256
    assert trimmed.shape[1] == int((full != pad).sum(1).max())  # the longest prompt, [SEP] kept
    assert torch.equal(trimmed, full[:, : trimmed.shape[1]])
    with torch.no_grad():
        padded = clip.model.encode_text(full)
        short = clip.model.encode_text(trimmed)
        bundle = clip.encode_text(prompts, normalize=False)
        cut = clip.model.encode_text(full[:, : trimmed.shape[1] - 1])  # one real token too few
    assert torch.allclose(short, padded, atol=1e-5, rtol=1e-4)
    assert torch.allclose(bundle, padded, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(cut, padded, atol=1e-3)  # the check can tell a wrong cut


def test_trim_padding_leaves_other_text_towers_alone():
    toy = load_clip("toy", device="cpu")
    tokens = toy.tokenize(["breast tumor"])
    assert trim_padding(toy.model, tokens) is tokens
