"""SAM 2 box/point backends and the SAM 3 text baseline, on the real architectures (transformers'
Sam2Model / Sam3Model, small configs, random weights), loaded through the real code from a Hugging
Face cache written the way the hub writes it (tests/sam_hub_cache.py). No mocks."""

from __future__ import annotations

import csv
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
from hf_cache import use_hf_cache
from sam_hub_cache import blob_of, save_sam2_video, save_sam3_video, write_hub_model

from medclipsam.models import (
    GatedModelError,
    HubModelError,
    HubModelMissingError,
    Sam2Predictor,
    Sam3TextModel,
    build_sam2,
    build_sam3,
    load_sam,
    load_sam3,
)
from medclipsam.sam_session import SamSession

pytestmark = pytest.mark.usefixtures("one_thread")


def _image(h=90, w=200, seed=0):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def sam2_folder(tmp_path_factory):
    return save_sam2_video(tmp_path_factory.mktemp("sam2") / "model")


@pytest.fixture(scope="module")
def sam3_folder(tmp_path_factory):
    return save_sam3_video(tmp_path_factory.mktemp("sam3") / "model")


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    """An empty hub cache, offline, and a fresh medclipsam cache (for verification stamps)."""
    monkeypatch.setenv("MEDCLIPSAM_CACHE", str(tmp_path / "mcs"))
    root = tmp_path / "hf"
    root.mkdir()
    use_hf_cache(monkeypatch, root)
    return root


# --------------------------------------------------------------------------------------------
# SAM 2: loading


def test_sam2_by_name_from_the_hub_cache(cache, sam2_folder, tmp_path):
    from safetensors.torch import load_file

    snap = write_hub_model(cache, "facebook/sam2.1-hiera-tiny", sam2_folder)
    p = load_sam("sam2-hiera-tiny", device="cpu")
    assert isinstance(p, Sam2Predictor) and p.image_size == 256
    saved = load_file(str(sam2_folder / "model.safetensors"))
    own = p.hf.state_dict()
    key = "vision_encoder.backbone.blocks.0.attn.qkv.weight"
    assert torch.equal(own[key], saved[key])  # the file's weights, not random ones
    # verified against the blob name (the hub's SHA-256) once, then stamped
    digest = blob_of(snap, "model.safetensors").name
    assert (tmp_path / "mcs" / "verified" / digest).is_file()


def test_sam2_folder_and_hub_id_load_too(cache, sam2_folder):
    assert isinstance(load_sam(str(sam2_folder), device="cpu"), Sam2Predictor)
    write_hub_model(cache, "facebook/sam2.1-hiera-small", sam2_folder)
    assert isinstance(load_sam("facebook/sam2.1-hiera-small", device="cpu"), Sam2Predictor)


def test_sam2_corrupt_blob_is_refused(cache, sam2_folder):
    snap = write_hub_model(cache, "facebook/sam2.1-hiera-tiny", sam2_folder)
    blob = blob_of(snap, "model.safetensors")
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(HubModelError, match="published"):
        load_sam("sam2-hiera-tiny", device="cpu")


def test_sam2_missing_tensors_are_refused(cache, sam2_folder, tmp_path):
    from safetensors.torch import load_file, save_file

    part = tmp_path / "part"
    part.mkdir()
    sd = load_file(str(sam2_folder / "model.safetensors"))
    save_file({k: v for k, v in sd.items() if "mask_decoder" not in k}, str(part / "model.safetensors"),
              metadata={"format": "pt"})
    (part / "config.json").write_text((sam2_folder / "config.json").read_text())
    with pytest.raises(HubModelError, match="missing"):
        load_sam(str(part), device="cpu")


def test_sam2_not_cached_offline_says_what_to_fetch(cache):
    with pytest.raises(HubModelMissingError, match=r"hf download facebook/sam2\.1-hiera-tiny"):
        load_sam("sam2-hiera-tiny", device="cpu")


def test_medsam2_says_why_and_how():
    with pytest.raises(FileNotFoundError, match="original code base"):
        load_sam("medsam2")


def test_a_folder_of_another_model_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "sam3"}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    from medclipsam.models.sam2 import load_sam2

    with pytest.raises(HubModelError, match="not SAM 2"):
        load_sam2(tmp_path, device="cpu")


# --------------------------------------------------------------------------------------------
# SAM 2: the predictor


@pytest.fixture(scope="module")
def sam2():
    return build_sam2("test")


def test_sam2_geometry_on_a_non_square_image_matches_transformers_processor(sam2):
    """Boxes, pixels and masks go through the same per-axis resize as SAM 2's own processor."""
    from transformers import Sam2Processor
    from transformers.models.sam2.image_processing_sam2 import Sam2ImageProcessor

    img, box = _image(90, 200), [30.0, 10.0, 150.0, 70.0]
    proc = Sam2Processor(image_processor=Sam2ImageProcessor(size={"height": 256, "width": 256}),
                         target_size=256)
    inp = proc(images=img, input_boxes=[[box]], return_tensors="pt")
    ours = sam2.transform.apply_boxes_torch(torch.tensor([box]), img.shape[:2])
    assert torch.allclose(ours, inp["input_boxes"][0], atol=1e-4)
    with torch.no_grad():
        out = sam2.hf(pixel_values=inp["pixel_values"], input_boxes=inp["input_boxes"],
                      multimask_output=True)
    ref = proc.post_process_masks(out.pred_masks, inp["original_sizes"])[0][0].numpy()
    sam2.set_image(img)
    masks, iou, low = sam2.predict(box=np.array(box), multimask_output=True)
    assert masks.shape == (3, 90, 200) and iou.shape == (3,) and low.shape == (3, 64, 64)
    # the processor resizes uint8 pixels (rounding), we resize floats: nearly all pixels agree
    assert (masks == ref).mean() > 0.99
    assert np.allclose(iou, out.iou_scores[0, 0].numpy(), atol=1e-3)
    # masks are the low-resolution logits upsampled straight to the image and cut at 0
    up = torch.nn.functional.interpolate(torch.from_numpy(low)[None], size=(90, 200), mode="bilinear",
                                         align_corners=False)[0]
    assert np.array_equal(masks, (up > 0).numpy())


def test_sam2_session_one_embedding_per_image_batched_prompts_and_multimask_choice(sam2):
    img = _image(120, 64, seed=1)
    with SamSession(sam2) as s:
        assert s.set_image(img) and not s.set_image(img.copy())
        boxes = np.array([[5, 10, 40, 60], [10, 70, 60, 115]])
        r = s.predict(boxes, union=True)
        assert r.masks.shape == (2, 120, 64) and r.mask.shape == (120, 64)
        assert np.array_equal(r.mask, r.masks.any(axis=0))
        pts, labels = np.array([[[20, 30]], [[30, 90]]]), np.array([[1], [1]])
        r = s.predict(points=pts, point_labels=labels, multimask=True)
        coords = sam2.transform.apply_coords_torch(torch.tensor(pts, dtype=torch.float32), (120, 64))
        _, iou, _ = sam2.predict_torch(coords, torch.tensor(labels), multimask_output=True)
        assert np.array_equal(r.choice, iou.argmax(1).numpy())  # best of three by predicted IoU
        r = s.predict(boxes[:1], points=pts[:1], point_labels=labels[:1])
        assert r.masks.shape == (1, 120, 64)
        assert s.encoder_calls == 1
        s.set_image(_image(50, 50, seed=2))
        assert s.encoder_calls == 2


def test_sam2_in_the_pipeline_one_encoder_run_for_several_prompt_modes(sam2):
    from medclipsam import MedCLIPSAM
    from medclipsam.models import load_clip

    pipe = MedCLIPSAM(load_clip("toy", device="cpu"), sam2, saliency="uniform", postprocess="threshold")
    img = _image(64, 96, seed=3)
    before = pipe.session.encoder_calls
    for mode in ("box", "points", "box+points"):
        res = pipe.predict(img, "breast tumor", sam_prompt_mode=mode)
        assert res.mask.shape == (64, 96)
    assert pipe.session.encoder_calls - before == 1
    pipe.close()


def test_sam2_predict_needs_an_image(sam2):
    fresh = build_sam2("test")
    with pytest.raises(RuntimeError, match="set_image"):
        fresh.predict(box=np.array([0, 0, 5, 5]))


# --------------------------------------------------------------------------------------------
# SAM 3: loading and the gated weights


def test_sam3_from_the_hub_cache_in_the_repository_layout(cache, sam3_folder):
    write_hub_model(cache, "facebook/sam3", sam3_folder)
    m = load_sam3("facebook/sam3", device="cpu")
    assert isinstance(m, Sam3TextModel) and m.image_size == 224
    ids, mask = m.tokenize(["lesion"])
    assert ids.shape == (1, 32) and int(mask.sum()) == 4  # <start> les ion</w> <end>
    img = _image(70, 130, seed=4)
    assert m.set_image(img) and not m.set_image(img)
    out = m.segment("lesion", threshold=0.0)
    assert out.masks.shape == (10, 70, 130) and out.boxes.shape == (10, 4)
    assert out.semantic.shape == (70, 130) and 0 <= out.semantic.min() <= out.semantic.max() <= 1
    assert np.all(out.boxes[:, [0, 2]] <= 130) and np.all(out.boxes[:, [1, 3]] <= 70)
    assert np.all(np.diff(out.scores) <= 0)  # best first
    assert m.encoder_calls == 1


def test_sam3_missing_weights_explain_the_gate(cache):
    with pytest.raises(HubModelMissingError) as e:
        load_sam3(device="cpu")
    msg = str(e.value)
    assert "gated" in msg and "https://huggingface.co/facebook/sam3" in msg
    assert "hf auth login" in msg and "hf download facebook/sam3 --local-dir DIR" in msg


class _GatedHub(BaseHTTPRequestHandler):
    """What the hub answers for a gated repository without access."""

    def _deny(self):
        body = b'{"error": "Access to model facebook/sam3 is restricted."}'
        self.send_response(403)
        self.send_header("X-Error-Code", "GatedRepo")
        self.send_header("X-Error-Message", "Access to model facebook/sam3 is restricted.")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_HEAD = _deny  # noqa: N815

    def log_message(self, *args):  # quiet
        pass


def test_sam3_refused_by_the_hub_says_how_to_request_access(tmp_path, monkeypatch):
    from huggingface_hub import constants

    server = ThreadingHTTPServer(("127.0.0.1", 0), _GatedHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("MEDCLIPSAM_OFFLINE", raising=False)
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.server_port}")
        with pytest.raises(GatedModelError) as e:
            load_sam3(device="cpu")
    finally:
        server.shutdown()
    assert "accept the SAM licence" in str(e.value) and "gated" in str(e.value)


# --------------------------------------------------------------------------------------------
# SAM 3: the text baseline with the pipeline's interface


@pytest.fixture(scope="module")
def sam3_baseline():
    from medclipsam.text_baselines import Sam3TextBaseline

    return Sam3TextBaseline(build_sam3("test"))


def test_sam3_baseline_result_type_and_metrics(sam3_baseline):
    from medclipsam.data.phantom import PhantomDataset
    from medclipsam.evaluation import evaluate_predictions
    from medclipsam.pipeline import SegmentationResult

    samples = PhantomDataset("breast", 2, seed=0, size=96, normal_fraction=0.0)[:]
    res = sam3_baseline.predict(samples[0].rgb, "lesion", threshold=0.0)
    assert isinstance(res, SegmentationResult)
    assert res.mask.shape == res.saliency.shape == res.coarse_mask.shape == (96, 96)
    assert res.mask.any() and res.boxes.shape[1] == 4 and res.points is None and not res.flags
    assert set(res.timings) == {"saliency", "sam_prompts", "sam_embed", "sam_decode", "total"}
    none = sam3_baseline.predict(samples[0].rgb, "lesion", threshold=0.99)
    assert none.flags == ("sam3_nothing_found",) and not none.mask.any() and none.boxes is None
    best = sam3_baseline.predict(samples[0].rgb, "lesion", threshold=0.0, keep="best")
    assert best.boxes.shape == (1, 4)
    rows, results = evaluate_predictions(sam3_baseline, [s.rgb for s in samples],
                                         [s.mask for s in samples], "lesion", threshold=0.0)
    assert len(rows) == 2 and all(0.0 <= r["dice"] <= 1.0 for r in rows)
    assert all(r["seconds"] > 0 for r in rows)


def test_sam3_baseline_run_folder_writes_and_resumes(sam3_baseline, tmp_path):
    from medclipsam.data.phantom import write_phantom_folder

    write_phantom_folder(tmp_path / "ph", "breast", 3, seed=0, size=64)
    out = tmp_path / "out"
    rows = sam3_baseline.run_folder(tmp_path / "ph" / "images", "lesion", out, progress=False)
    assert len(rows) == 3 and len(list((out / "masks").glob("*.png"))) == 3
    assert json.loads((out / "run.json").read_text())["config"]["threshold"] == 0.5
    calls = sam3_baseline.encoder_calls
    sam3_baseline.run_folder(tmp_path / "ph" / "images", "lesion", out, progress=False)
    assert sam3_baseline.encoder_calls == calls  # resumed: nothing recomputed
    with open(out / "results.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 3


# --------------------------------------------------------------------------------------------
# the comparison


def test_compare_backends_one_saliency_per_image_and_tables(tmp_path, sam2, sam3_baseline):
    from medclipsam.compare import compare_backends, format_table
    from medclipsam.data.phantom import write_phantom_folder
    from medclipsam.models import load_clip

    write_phantom_folder(tmp_path / "ph", "breast", 2, seed=0, size=64)
    clip = load_clip("toy", device="cpu")
    from medclipsam.config import PipelineConfig

    cfg = PipelineConfig(saliency="gradcam", postprocess="threshold")
    rows = compare_backends(tmp_path / "ph", "breast tumor",
                            {"litemedsam": "litemedsam", "sam2 (random)": sam2, "sam3 (random)": sam3_baseline},
                            clip=clip, config=cfg, out_dir=tmp_path / "cmp", n_boot=50,
                            progress=False, device="cpu")
    assert [r["backend"] for r in rows] == ["litemedsam", "sam2 (random)", "sam3 (random)"]
    assert rows[2]["method"] == "SAM 3, text only" and rows[1]["method"].startswith("MedCLIP-SAM")
    for r in rows:
        assert r["images"] == 2 and 0 <= r["dice"] <= 1 and r["s_per_image"] >= r["s_segmenter"] > 0
    # the two MedCLIP-SAM rows share one saliency computation: equal saliency seconds per image
    assert rows[0]["s_per_image"] - rows[0]["s_segmenter"] == pytest.approx(
        rows[1]["s_per_image"] - rows[1]["s_segmenter"], abs=1e-6)
    assert "| sam3 (random) | SAM 3, text only | 2 |" in format_table(rows)
    out = tmp_path / "cmp"
    for d in ("litemedsam", "sam2_random", "sam3_random"):
        assert len(list((out / d / "masks").glob("*.png"))) == 2
    with open(out / "per_image.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 6
    assert (out / "comparison.csv").is_file() and (out / "comparison.md").is_file()


def test_cli_compare_with_model_folders(tmp_path, sam2_folder, sam3_folder, capsys):
    from medclipsam.cli import main
    from medclipsam.data.phantom import write_phantom_folder

    write_phantom_folder(tmp_path / "ph", "breast", 2, seed=0, size=64)
    rc = main(["compare", "--data", str(tmp_path / "ph"), "--prompt", "breast tumor",
               "--backends", f"litemedsam,{sam2_folder},sam3-text:{sam3_folder}", "--clip", "toy",
               "--out", str(tmp_path / "cmp"), "--n-boot", "20", "--device", "cpu", "--quiet"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "SAM 3, text only" in text and "MedCLIP-SAM + litemedsam" in text and "s / image" in text
    with open(tmp_path / "cmp" / "comparison.csv") as fh:
        assert [r["backend"] for r in csv.DictReader(fh)] == ["litemedsam", str(sam2_folder),
                                                              f"sam3-text:{sam3_folder}"]


def test_cli_segment_then_evaluate_with_sam3(tmp_path, sam3_folder, capsys):
    from medclipsam.cli import main
    from medclipsam.data.phantom import write_phantom_folder

    write_phantom_folder(tmp_path / "ph", "breast", 2, seed=0, size=64)
    assert main(["segment", "--images", str(tmp_path / "ph" / "images"), "--prompt", "lesion",
                 "--out", str(tmp_path / "seg"), "--sam", f"sam3-text:{sam3_folder}",
                 "--device", "cpu", "--quiet"]) == 0
    assert main(["evaluate", "--pred", str(tmp_path / "seg" / "masks"),
                 "--gt", str(tmp_path / "ph" / "masks"), "--n-boot", "20"]) == 0
    assert "dice" in capsys.readouterr().out


def test_explorer_compare_tab_puts_sam3_beside_medclip_sam(sam3_baseline):
    pytest.importorskip("ipywidgets")
    from medclipsam.widgets import PromptExplorer

    loads = []

    def load():
        loads.append(1)
        return sam3_baseline

    ex = PromptExplorer.offline(per_task=1, size=96, text_baseline=load)
    ex.select(next(n for n in ex.images if n.startswith("breast")))
    ex.method.value = "uniform"  # a control map: cheap, and no prompt-sensitivity runs
    rows = ex.compare(["breast tumor", "lesion"])
    assert loads == [1] and ex.counts["text_baseline"] == 2
    assert all(0.0 <= r["text_dice"] <= 1.0 and "text_score" in r for r in rows)
    column = ex.compare_out.children[0].children[0]
    assert len(column.children) == 5  # caption, saliency, MedCLIP-SAM mask, label, SAM 3 mask
    assert "text alone" in column.children[3].value
