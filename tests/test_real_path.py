"""The real path a Colab user takes (issue 16), offline: a user's weight file is never deleted,
MedSAM by path, local CLIP folders, k and post-processing from every entry point, the world
helpers lessons use, one SAM embedding per image in an ablation, a minimum box area, and device
placement for CUDA checked on the CPU (tensors on the ``meta`` device)."""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings

import numpy as np
import pytest
import torch
from hf_cache import BIOMEDCLIP_CONFIG, use_hf_cache, write_biomedclip_cache
from httpserver import FileServer

from medclipsam.download import DownloadError
from medclipsam.models import registry
from medclipsam.models.clip import CheckpointError, load_clip
from medclipsam.models.registry import WeightSpec, WeightVerificationError, weight_path
from medclipsam.models.sam import MedSamPredictor, build_sam, load_sam, save_sam_checkpoint

TINY_SAM = {
    "encoder_embed_dim": 32, "encoder_depth": 2, "encoder_num_heads": 2,
    "encoder_global_attn_indexes": [1], "image_size": 64, "window_size": 2,
    "prompt_embed_dim": 32, "decoder_mlp_dim": 64, "decoder_num_heads": 2,
    "iou_head_hidden_dim": 32,
}  # fmt: skip


@pytest.fixture
def online(monkeypatch):
    """Downloads allowed (conftest switches offline mode on for the whole suite)."""
    monkeypatch.delenv("MEDCLIPSAM_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def _spec(url: str, data: bytes) -> WeightSpec:
    return WeightSpec(name="sam_tiny", filename="sam_tiny_abc.pth", urls=[url],
                      md5=hashlib.md5(data).hexdigest(), size=len(data))


# --------------------------------------------------------------------------------------------
# the registry never deletes a user's file


def test_a_users_file_is_kept_when_the_official_download_fails(tmp_path, online):
    official = b"official weights" * 100
    mine = b"my fine-tuned weights" * 80
    dest = tmp_path / "sam_tiny_abc.pth"
    dest.write_bytes(mine)
    with FileServer() as srv:
        route = srv.add("/w.pth", official, status=404)
        spec = _spec(srv.url("/w.pth"), official)
        with pytest.raises(DownloadError) as info:
            weight_path("sam_tiny", cache=tmp_path, spec=spec, progress=False, retries=1)
        assert len(route.requests) == 1  # it did try
    assert dest.read_bytes() == mine  # untouched
    msg = str(info.value)
    assert "not the official" in msg and "left where it is" in msg
    assert f"checkpoint={str(dest.absolute())!r}" in msg and "--sam-checkpoint" in msg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sam_tiny_abc.pth"]  # no staging left


def test_a_users_file_is_moved_aside_not_deleted_when_the_official_one_arrives(tmp_path, online):
    official = b"official weights" * 100
    mine = b"my fine-tuned weights" * 80
    dest = tmp_path / "sam_tiny_abc.pth"
    dest.write_bytes(mine)
    (tmp_path / "sam_tiny_abc.not-verified.pth").write_bytes(b"an older one")
    with FileServer() as srv:
        srv.add("/w.pth", official)
        spec = _spec(srv.url("/w.pth"), official)
        with pytest.warns(UserWarning, match="moved to .*not-verified-1.pth.*nothing was deleted"):
            path = weight_path("sam_tiny", cache=tmp_path, spec=spec, progress=False)
    assert path.read_bytes() == official
    assert (tmp_path / "sam_tiny_abc.not-verified-1.pth").read_bytes() == mine
    assert (tmp_path / "sam_tiny_abc.not-verified.pth").read_bytes() == b"an older one"


def test_offline_a_mismatching_file_is_explained_and_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDCLIPSAM_OFFLINE", "1")
    dest = tmp_path / "sam_tiny_abc.pth"
    dest.write_bytes(b"a MedSAM file under a SAM name")
    spec = _spec("http://127.0.0.1:9/w.pth", b"the official bytes")
    with pytest.raises(WeightVerificationError) as info:
        weight_path("sam_tiny", cache=tmp_path, spec=spec)
    msg = str(info.value)
    assert "size is 30 bytes, expected 18" in msg and "left where it is" in msg
    assert "load_sam('tiny', checkpoint=" in msg
    assert dest.read_bytes() == b"a MedSAM file under a SAM name"


def test_the_verified_stamp_does_not_let_a_replaced_file_through(tmp_path, monkeypatch):
    """A file with the stamped size and modification time but other bytes is hashed again."""
    monkeypatch.setenv("MEDCLIPSAM_OFFLINE", "1")
    data = b"the official bytes" * 64
    spec = _spec("http://127.0.0.1:9/w.pth", data)
    dest = tmp_path / spec.filename
    dest.write_bytes(data)
    assert weight_path("sam_tiny", cache=tmp_path, spec=spec) == dest.absolute()
    stamp = (tmp_path / (spec.filename + ".verified")).read_text()
    assert spec.md5 in stamp
    st = dest.stat()
    time.sleep(0.01)
    dest.write_bytes(data[::-1])  # same size, other bytes, then the old mtime put back
    os.utime(dest, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert dest.stat().st_size == st.st_size and dest.stat().st_mtime_ns == st.st_mtime_ns
    with pytest.raises(WeightVerificationError, match="MD5 is"):
        weight_path("sam_tiny", cache=tmp_path, spec=spec)
    # A stamp written for other expectations (another registry entry) does not count either.
    dest.write_bytes(data)
    other = WeightSpec(name="sam_tiny", filename=spec.filename, urls=spec.urls, md5="0" * 32)
    weight_path("sam_tiny", cache=tmp_path, spec=spec)
    with pytest.raises(WeightVerificationError):
        weight_path("sam_tiny", cache=tmp_path, spec=other)


def test_the_registry_documents_the_stamp_and_the_no_delete_rule():
    doc = registry.__doc__
    assert ".verified" in doc and "st_ctime" in doc and "never deleted" in doc


# --------------------------------------------------------------------------------------------
# MedSAM by path


@pytest.fixture(scope="module")
def tiny_sam_file(tmp_path_factory):
    torch.manual_seed(0)
    return save_sam_checkpoint(build_sam(TINY_SAM), tmp_path_factory.mktemp("sam") / "mine.pt",
                               TINY_SAM)


def test_medsam_from_a_users_file_gets_medsams_predictor(tiny_sam_file):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a name says the kind: nothing to warn about
        assert isinstance(load_sam("medsam", checkpoint=tiny_sam_file, device="cpu"), MedSamPredictor)
        assert type(load_sam(tiny_sam_file, kind="medsam", device="cpu")) is MedSamPredictor
        assert type(load_sam(tiny_sam_file, kind="sam", device="cpu")).__name__ == "SamPredictor"
    with pytest.raises(ValueError, match="kind"):
        load_sam(tiny_sam_file, kind="MedSAM2")


def test_a_file_given_by_path_alone_says_which_kind_it_is_assumed_to_be(tiny_sam_file, tmp_path):
    with pytest.warns(UserWarning, match=r"mine.pt: loaded as a plain SAM.*load_sam\('medsam', "
                      r"checkpoint=.*--sam medsam --sam-checkpoint"):
        p = load_sam(tiny_sam_file, device="cpu")
    assert type(p).__name__ == "SamPredictor"
    named = tmp_path / "medsam_vit_b_finetuned.pth"
    named.write_bytes(tiny_sam_file.read_bytes())
    with pytest.warns(UserWarning, match="loaded as MedSAM.*file name contains 'medsam'.*kind='sam'"):
        assert isinstance(load_sam(named, device="cpu"), MedSamPredictor)
    torch.manual_seed(0)
    tagged = save_sam_checkpoint(build_sam(TINY_SAM), tmp_path / "tagged.pt", TINY_SAM, kind="medsam")
    with pytest.warns(UserWarning, match="its meta says kind='medsam'"):
        assert isinstance(load_sam(tagged, device="cpu"), MedSamPredictor)


def test_from_pretrained_and_the_cli_give_medsam_from_a_users_file(tiny_sam_file):
    from medclipsam import MedCLIPSAM
    from medclipsam.cli import build_parser
    from medclipsam.cli.checks import check_model_args
    from medclipsam.cli.options import load_pipeline

    pipe = MedCLIPSAM.from_pretrained("toy", "medsam", sam_checkpoint=tiny_sam_file, device="cpu")
    try:
        assert isinstance(pipe.sam, MedSamPredictor) and pipe.world == "real"
    finally:
        pipe.close()
    for command in ("segment", "pseudo-label"):
        args = build_parser().parse_args([
            command, "--images", "x", "--prompt", "p", "--out", "o", "--clip", "toy",
            "--sam", "medsam", "--sam-checkpoint", str(tiny_sam_file), "--device", "cpu"])
        pipe = load_pipeline(args)
        try:
            assert isinstance(pipe.sam, MedSamPredictor)
        finally:
            pipe.close()
    # Checked before any model loads: a file for a named SAM, and one that exists.
    for sam, checkpoint, error in ((str(tiny_sam_file), tiny_sam_file, "--sam medsam --sam-checkpoint"),
                                   ("sam2-hiera-tiny", tiny_sam_file, "not --sam sam2-hiera-tiny"),
                                   ("medsam", tiny_sam_file.with_name("none.pt"), "file not found")):
        args = build_parser().parse_args(["segment", "--images", "x", "--prompt", "p", "--out", "o",
                                          "--sam", sam, "--sam-checkpoint", str(checkpoint)])
        with pytest.raises((ValueError, FileNotFoundError), match=error):
            check_model_args(args)


# --------------------------------------------------------------------------------------------
# local CLIP folders (a Hugging Face snapshot of an open_clip model)

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.mark.parametrize("weights", ["open_clip_pytorch_model.bin", "open_clip_model.safetensors"])
def test_load_clip_reads_a_local_snapshot_folder(tmp_path, weights):
    from open_clip.model import CLIP

    torch.manual_seed(0)
    model = CLIP(**TINY_CLIP).eval()
    folder = tmp_path / "my-clip"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": TINY_CLIP, "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.25] * 3}}))
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    if weights.endswith(".bin"):
        torch.save(sd, folder / weights)
    else:
        from safetensors.torch import save_file

        save_file(sd, str(folder / weights))
    image = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        want = model.encode_image(image)
    for name in (folder, str(folder), f"local-dir:{folder}"):
        clip = load_clip(name, device="cpu")
        assert clip.pretrained and clip.name == "my-clip" and clip.mean == (0.5, 0.5, 0.5)
        with torch.no_grad():
            assert torch.allclose(clip.model.encode_image(image), want, atol=1e-6)
        assert clip.tokenize(["a lesion"]).shape == (1, 16)


def test_local_folder_errors_and_random_weights_are_explained(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    with pytest.raises(CheckpointError, match="no open_clip_config.json.*readme.txt"):
        load_clip(empty, device="cpu")
    with pytest.raises(FileNotFoundError, match="folder not found"):
        load_clip(f"local-dir:{tmp_path / 'missing'}")
    (empty / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP}))
    with pytest.warns(UserWarning, match="no weights.*RANDOM"):
        assert load_clip(f"local-dir:{empty}", device="cpu").pretrained is False


def test_a_biomedclip_snapshot_folder_builds_its_real_architecture(tmp_path, monkeypatch):
    """The folder `hf download ... --local-dir DIR` writes (config only here: random weights);
    the text encoder's files come from the Hugging Face cache as on a user's machine."""
    use_hf_cache(monkeypatch, write_biomedclip_cache(tmp_path / "hf"))
    folder = tmp_path / "BiomedCLIP"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps(BIOMEDCLIP_CONFIG))
    with pytest.warns(UserWarning, match="RANDOM"):
        clip = load_clip(folder, device="cpu")
    assert clip.image_size == 224 and clip.context_length == 256
    assert type(clip.model.visual.trunk).__name__ == "VisionTransformer"


# --------------------------------------------------------------------------------------------
# the worlds a lesson asks for


def test_pipeline_for_world_says_what_it_built_and_falls_back_with_the_reason(
        tiny_sam_file, tmp_path, capsys):
    from medclipsam.config import default_k
    from medclipsam.worlds import pipeline_for_world

    pipe = pipeline_for_world("real", clip="toy", sam="medsam", sam_checkpoint=tiny_sam_file,
                              k=7, device="cpu")
    try:
        out = capsys.readouterr().out
        assert pipe.world == "real" and isinstance(pipe.sam, MedSamPredictor)
        assert pipe.config.k == 7 and pipe.config.saliency_kwargs == {}
        assert out.startswith("real world: CLIP toy") and "MedSAM predictor" in out and "k=7" in out
    finally:
        pipe.close()
    missing = tmp_path / "no_such_clip.pt"
    pipe = pipeline_for_world("real", clip=str(missing), sam=str(tiny_sam_file), k=5)
    try:
        out = capsys.readouterr().out
        assert pipe.world == "offline" and pipe.config.k == 5
        assert "real world not available (FileNotFoundError" in out and str(missing) in out
        assert "-> using the offline world" in out and "offline world: toy CLIP + LiteMedSAM" in out
    finally:
        pipe.close()
    with pytest.raises(FileNotFoundError):
        pipeline_for_world("real", clip=str(missing), sam=str(tiny_sam_file), fallback=False)
    with pytest.raises(ValueError, match="WORLD"):
        pipeline_for_world("Real")
    assert default_k("real") == 300 and default_k("offline") == 112


def test_clip_for_world_falls_back_to_the_toy_clip(tmp_path, capsys):
    from medclipsam.worlds import clip_for_world

    clip, world = clip_for_world("real", clip=str(tmp_path / "missing.pt"))
    assert world == "offline" and clip.name == "toy"
    assert "-> using the toy CLIP" in capsys.readouterr().out
    clip, world = clip_for_world("real", clip="toy")
    assert world == "real" and "real world: CLIP toy (pretrained)" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------
# one SAM embedding per image, whatever an ablation varies


def _phantoms(task: str, n: int, size: int = 128):
    from medclipsam.data.phantom import PhantomDataset

    return PhantomDataset(task, n, seed=0, size=size, split="test", normal_fraction=0.0)[:]


LESSON04_SETTINGS = [
    {"postprocess": post, "sam_prompt_mode": mode}
    for post in ("crf", "kmeans", "threshold", "otsu") for mode in ("box", "points", "box+points")
] + [{"saliency": "random"}, {"saliency": "uniform"}]


def test_sweep_embeds_each_image_once_for_all_fourteen_settings(standin_pipe):
    samples = _phantoms("breast", 3)
    images = [s.rgb for s in samples]
    calls = standin_pipe.session.encoder_calls
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no crf extra: k-means, flagged
        results = standin_pipe.sweep(images, "breast tumor", LESSON04_SETTINGS, task="breast")
    assert standin_pipe.session.encoder_calls - calls == 3  # not 14 x 3 = 42
    assert len(results) == 14 and all(len(r) == 3 for r in results)
    # The same masks as predict() gives setting by setting (which re-embeds every image).
    for s in (0, 4, 12, 13):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            one = standin_pipe.predict(images, "breast tumor", task="breast", **LESSON04_SETTINGS[s])
        for a, b in zip(results[s], one):
            assert np.array_equal(a.mask, b.mask) and a.flags == b.flags
            assert np.allclose(a.saliency, b.saliency)


def test_evaluate_settings_scores_an_ablation_with_given_maps(standin_pipe):
    from medclipsam.evaluation import evaluate_settings

    samples = _phantoms("brain", 2)
    images, masks = [s.rgb for s in samples], [s.mask for s in samples]
    maps = [r.saliency for r in standin_pipe.predict(images, "brain tumor", task="brain")]
    calls = standin_pipe.session.encoder_calls
    rows = evaluate_settings(standin_pipe, images, masks, "brain tumor",
                             [{}, {"postprocess": "otsu"}, {"saliency": "uniform"}],
                             task="brain", maps=maps, n_boot=50)
    assert standin_pipe.session.encoder_calls - calls == 2
    assert [r["setting"] for r in rows] == [{}, {"postprocess": "otsu"}, {"saliency": "uniform"}]
    assert all(0 <= r["dice"]["mean"] <= 1 and len(r["results"]) == 2 for r in rows)
    assert np.allclose(rows[0]["results"][0].saliency, maps[0])  # the maps given were used
    assert rows[2]["flagged"] == 2  # a uniform map has no contrast: flagged every time


# --------------------------------------------------------------------------------------------
# minimum box area


def test_make_sam_prompts_drops_boxes_below_the_minimum_area_with_a_flag():
    from medclipsam.prompting import make_sam_prompts

    sal = np.zeros((200, 200), np.float32)
    sal[40:160, 20:90] = 1.0  # a lung
    sal[100, 150] = 1.0  # a one-pixel speck: the second-largest component
    kw = dict(postprocess="threshold", box_mode="per_component", n_components=2)
    pr = make_sam_prompts(sal, **kw)
    assert len(pr.boxes) == 2 and pr.flags == ()
    pr = make_sam_prompts(sal, min_box_area=5e-3, **kw)
    assert pr.boxes.tolist() == [[20.0, 40.0, 89.0, 159.0]]
    assert "small_box_dropped" in pr.flags and "fewer_components" in pr.flags
    assert not pr.mask[100, 150]  # the coarse mask holds what the prompts came from
    speck = np.zeros((200, 200), np.float32)
    speck[10, 10] = 1.0
    pr = make_sam_prompts(speck, postprocess="threshold", min_box_area=1e-4)
    assert {"small_box_dropped", "no_component", "whole_image_box"} <= set(pr.flags)


def test_the_xray_preset_flags_a_speck_instead_of_prompting_sam_with_it(standin_pipe):
    from medclipsam.config import TASK_PRESETS, PipelineConfig

    assert PipelineConfig().min_box_area == 1e-4
    assert {t: p["min_box_area"] for t, p in TASK_PRESETS.items()} == {
        "breast": 5e-4, "brain": 5e-4, "xray": 5e-3}
    image = _phantoms("xray", 1)[0].rgb
    sal = np.zeros(image.shape[:2], np.float32)
    sal[20:100, 10:55] = 1.0
    sal[60, 100] = 1.0
    res = standin_pipe.predict(image, "lungs", task="xray", maps=sal, postprocess="threshold")
    assert len(res.boxes) == 1 and "small_box_dropped" in res.flags
    assert "small_box_dropped" in res.row()["flags"]
    with pytest.raises(ValueError, match="min_box_area"):
        standin_pipe.predict(image, "lungs", maps=sal, min_box_area=1.5)


# --------------------------------------------------------------------------------------------
# k, saliency and post-processing from every entry point


def test_pseudo_label_takes_k_saliency_and_postprocess(tmp_path):
    import subprocess
    import sys

    from medclipsam.cli import build_parser
    from medclipsam.cli.options import pipeline_overrides

    data = tmp_path / "phantom"
    run = [sys.executable, "-m", "medclipsam"]
    assert subprocess.run([*run, "phantom", "--task", "breast", "--n", "2", "--size", "64", "--out",
                           str(data)], capture_output=True).returncode == 0
    out_dir = tmp_path / "pl"
    proc = subprocess.run([*run, "pseudo-label", "--images", str(data / "images"), "--prompt",
                           "breast tumor", "--out", str(out_dir), "--k", "8", "--postprocess", "otsu",
                           "--saliency", "gscorecam", "--device", "cpu", "--quiet"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    cfg = json.loads((out_dir / "run.json").read_text())["config"]
    assert cfg["k"] == 8 and cfg["saliency_kwargs"] == {} and cfg["postprocess"] == "otsu"
    assert len(list((out_dir / "masks").iterdir())) == 2
    args = build_parser().parse_args(["pseudo-label", "--images", "x", "--prompt", "p", "--out",
                                      "o", "--saliency", "gradcam", "--k", "8"])
    with pytest.raises(ValueError, match="--k: not an option of --saliency gradcam"):
        pipeline_overrides(args)


def test_the_explorer_takes_k(standin_pipe):
    pytest.importorskip("ipywidgets")
    from medclipsam.widgets import ExplorerImage, PromptExplorer

    s = _phantoms("breast", 1)[0]
    ex = PromptExplorer(standin_pipe, {"a": ExplorerImage(s.rgb, s.mask, "breast", "breast tumor")}, k=5)
    assert ex.last_error is None and ex.state["k"] == 5 and ex.config().k == 5
    ex = PromptExplorer(standin_pipe, {"a": s.rgb}, k=10_000)
    assert ex.state["k"] == ex.k.max  # clipped to the layer's channels
    with pytest.raises(ValueError, match="k must be"):
        PromptExplorer(standin_pipe, {"a": s.rgb}, k=0)


def test_explorer_for_world_builds_the_offline_world_with_k(capsys):
    pytest.importorskip("ipywidgets")
    from medclipsam.widgets import PromptExplorer

    ex = PromptExplorer.for_world("real", clip="/no/such/clip.pt", k=6, per_task=1, device="cpu")
    try:
        out = capsys.readouterr().out
        assert "-> using the offline world" in out and ex.pipeline.world == "offline"
        assert ex.state["k"] == 6 and len(ex.images) == 3 and ex.last_error is None
    finally:
        ex.pipeline.close()


# --------------------------------------------------------------------------------------------
# devices (what a CUDA user hits), checked on the CPU


def test_gradcam_moves_the_text_features_to_the_models_device():
    """The model on ``meta`` (a second device every machine has) and the text on the CPU: the
    features must follow the model, as they must follow it onto a GPU."""
    from medclipsam.saliency.gradcam import grad_cam

    clip = load_clip("toy", device="cpu")
    x, _ = clip.prepare(np.zeros((64, 64, 3), np.uint8))
    with torch.no_grad():
        txt = clip.encode_text(["breast tumor"])
    model = clip.model.to("meta")
    out = grad_cam(model, x[None].to("meta"), txt)
    assert out.device.type == "meta" and out.shape == (1, clip.image_size, clip.image_size)


def test_retrieval_indexes_on_the_embeddings_device():
    from medclipsam.retrieval import _same_group, topk_accuracy, topk_hits

    sim = torch.empty(6, 6, device="meta")
    for groups in (None, ["a", "b", "a", "c", "d", "e"]):
        same = _same_group(6, groups, sim.device)
        assert same.device.type == "meta"
        i2t, t2i = topk_hits(sim, same, 2)
        assert i2t.device.type == "meta" and i2t.shape == (6,) and t2i.shape == (6,)
    # and on the CPU the numbers are what they were
    img = torch.eye(4)
    txt = torch.eye(4)[[0, 1, 3, 2]]
    acc = topk_accuracy(img, txt, ks=(1, 2))
    assert acc["i2t_top1"] == 50.0 and acc["t2i_top2"] == 100.0
    assert topk_accuracy(img, txt, ks=(1,), groups=["x", "y", "z", "z"])["i2t_top1"] == 100.0


@pytest.mark.parametrize(
    "pref, local_rank, local_world, gpus, want",
    [
        ("cuda:1", 0, 1, 2, "cuda:1"),  # torchrun --nproc_per_node 1 ... --device cuda:1
        ("cuda", 1, 2, 2, "cuda:1"),
        ("auto", 1, 2, 2, "cuda:1"),
        ("cuda:1", 0, 2, 2, "cuda:0"),  # several processes: one GPU each (warned)
        ("auto", 0, 2, 0, "cpu"),
        ("cpu", 1, 2, 2, "cpu"),
    ],
)
def test_ddp_device_keeps_the_gpu_asked_for(pref, local_rank, local_world, gpus, want):
    from medclipsam.finetune import ddp_device

    assert ddp_device(pref, local_rank, local_world, gpus) == torch.device(want)


def test_ddp_device_never_falls_back_to_the_cpu_silently(caplog):
    from medclipsam.finetune import ddp_device

    with pytest.raises(RuntimeError, match="no CUDA device"):
        ddp_device("cuda:1", 0, 1, 0)
    with pytest.raises(RuntimeError, match="cuda:3.*2 CUDA device"):
        ddp_device("cuda:3", 0, 1, 2)
    with caplog.at_level("WARNING"):
        ddp_device("cuda:1", 0, 2, 2)
    assert "CUDA_VISIBLE_DEVICES" in caplog.text
