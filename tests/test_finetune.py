"""Contrastive fine-tuning (stage 1) of the toy CLIP on real phantom image-caption files."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from medclipsam.cli import main
from medclipsam.config import FinetuneConfig
from medclipsam.data import CaptionDataset
from medclipsam.data.phantom import write_phantom_folder
from medclipsam.finetune import finetune, latest_checkpoint
from medclipsam.models import load_clip

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    """24 train + 6 val phantom images, one caption each: ``pairs.csv`` (image,caption,split)."""
    root = write_phantom_folder(
        tmp_path_factory.mktemp("phantom"), "breast", 30, seed=0, size=224,
        splits={"train": 0.8, "val": 0.2},
    )
    with open(root / "captions.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    seen: set[str] = set()
    keep = []
    for row in rows:
        if row["image"] not in seen:
            seen.add(row["image"])
            keep.append(row)
    with open(root / "pairs.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["image", "caption", "split"])
        w.writeheader()
        w.writerows(keep)
    return root / "pairs.csv"


def _data(csv_path: Path) -> tuple[CaptionDataset, CaptionDataset]:
    return CaptionDataset(csv_path, split="train"), CaptionDataset(csv_path, split="val")


def _cfg(out: Path, **kw) -> FinetuneConfig:
    base = dict(out_dir=str(out), batch_size=8, epochs=2, lr=5e-4, warmup_steps=1,
                num_workers=0, progress=False, eval_before=False, device="cpu")
    base.update(kw)
    return FinetuneConfig(**base)


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


@pytest.fixture(scope="module")
def full_run(pairs, tmp_path_factory):
    """A completed 3-epoch run with a validation set (shared by several tests)."""
    train, val = _data(pairs)
    clip = load_clip("toy", device="cpu")
    out = tmp_path_factory.mktemp("run")
    result = finetune(clip, train, val, _cfg(out, epochs=3, eval_before=True))
    return clip, result, out


def test_training_loss_decreases_on_tiny_overfit_run(full_run):
    _, result, _ = full_run
    rows = result["history"]["epochs"]
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]
    assert rows[-1]["train_loss"] < rows[1]["train_loss"]
    assert result["global_step"] == 9 and not result["interrupted"]


def test_logs_have_expected_columns(full_run):
    _, _, out = full_run
    with open(out / "log.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["epoch"] for r in rows] == ["0", "1", "2", "3"]
    for col in ("train_loss", "val_loss", "lr", "i2t_top1", "i2t_top2", "t2i_top1", "t2i_top2"):
        assert col in rows[0]
    assert all(float(r["val_loss"]) > 0 for r in rows)
    assert all(0 <= float(r["i2t_top1"]) <= 100 for r in rows)
    assert rows[0]["train_loss"] == ""  # the start model has no training loss
    with open(out / "steps.csv", newline="") as fh:
        steps = list(csv.DictReader(fh))
    assert [int(s["step"]) for s in steps] == list(range(1, 10))
    logged = json.loads((out / "log.json").read_text())
    assert logged["config"]["loss"] == "dhn_nce" and len(logged["steps"]) == 9
    # only the last two checkpoints are kept
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["step_00000006.pt", "step_00000009.pt"]


def test_saved_model_loads_and_matches_in_memory_model(full_run, pairs):
    clip, result, _ = full_run
    assert result["model_path"] == result["out_dir"] / "model.pt"
    loaded = load_clip(result["model_path"], device="cpu")
    train, _ = _data(pairs)
    images = torch.stack([clip.preprocess(train[i][0]) for i in range(3)])
    captions = train.captions[:3]
    with torch.no_grad():
        assert torch.equal(clip.encode_image(images), loaded.encode_image(images))
        assert torch.equal(clip.encode_text(captions), loaded.encode_text(captions))
    init = load_clip("toy", device="cpu")
    with torch.no_grad():
        assert not torch.equal(init.encode_image(images), loaded.encode_image(images))


def test_interrupted_then_resumed_equals_uninterrupted(pairs, tmp_path):
    train, _ = _data(pairs)
    # 3 batches per epoch, accumulated 2 + 1: 2 optimiser steps per epoch, 4 in all
    kw = dict(grad_accum_steps=2, epochs=2)
    ref = load_clip("toy", device="cpu")
    finetune(ref, train, None, _cfg(tmp_path / "ref", **kw))

    part = load_clip("toy", device="cpu")
    res = finetune(part, train, None, _cfg(tmp_path / "cut", stop_after_steps=3, **kw))
    assert res["interrupted"] and res["global_step"] == 3 and res["model_path"] is None
    assert not (tmp_path / "cut" / "model.pt").exists()
    assert latest_checkpoint(tmp_path / "cut").name == "step_00000003.pt"
    with pytest.raises(FileExistsError, match="resume"):
        finetune(load_clip("toy", device="cpu"), train, None, _cfg(tmp_path / "cut", **kw))
    with pytest.raises(ValueError, match="lr"):
        finetune(load_clip("toy", device="cpu"), train, None,
                 _cfg(tmp_path / "cut", **{**kw, "lr": 1e-3}), resume=True)

    resumed = load_clip("toy", device="cpu")  # a fresh process would start like this
    res2 = finetune(resumed, train, None, _cfg(tmp_path / "cut", **kw), resume=True)
    assert res2["global_step"] == 4 and not res2["interrupted"]
    a, b = _params(ref.model), _params(resumed.model)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ref_log = (tmp_path / "ref" / "steps.csv").read_text()
    assert (tmp_path / "cut" / "steps.csv").read_text() == ref_log


@pytest.mark.parametrize("option", ["text", "image", "last_block"])
def test_freezing_options_freeze_what_they_say(pairs, tmp_path, option):
    train, _ = _data(pairs)
    clip = load_clip("toy", device="cpu")
    before = _params(clip.model)
    if option == "last_block":
        cfg = _cfg(tmp_path, epochs=1, trainable_blocks=1, lr=1e-3)
    else:
        cfg = _cfg(tmp_path, epochs=1, freeze=option, lr=1e-3)
    finetune(clip, train, None, cfg)
    after = dict(clip.model.named_parameters())

    def frozen(name: str) -> bool:
        if name == "logit_scale":  # fixed tau: the learned scale is unused and frozen
            return True
        image = name.startswith("visual.")
        if option == "text":
            return not image
        if option == "image":
            return image
        # last block of each tower and the output side train; embeddings and earlier blocks not
        if name.startswith("visual.trunk.blocks."):  # timm's ViT, as in BiomedCLIP: 4 blocks
            return not name.startswith("visual.trunk.blocks.3.")
        if name.startswith("transformer.resblocks."):
            return not name.startswith("transformer.resblocks.2.")
        return any(s in name for s in ("patch_embed", "cls_token", "pos_embed", "norm_pre",
                                       "positional_embedding", "token_embedding"))

    n_frozen = 0
    for name, p in after.items():
        if frozen(name):
            n_frozen += 1
            assert not p.requires_grad, name
            assert torch.equal(p.detach(), before[name]), f"{name} changed"
        else:
            assert p.requires_grad, name
            if p.ndim >= 2:  # every trainable matrix moves
                assert not torch.equal(p.detach(), before[name]), f"{name} did not change"
    assert 0 < n_frozen < len(after)


def test_command_line_runs_and_writes_model(pairs, tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(["finetune", "--clip", "toy", "--captions", str(pairs), "--out", str(out), "--epochs", "1",
               "--batch-size", "8", "--num-workers", "0", "--device", "cpu", "--no-progress",
               "--loss", "infonce", "--warmup-steps", "1"])
    assert rc == 0
    assert "done: step 3" in capsys.readouterr().out
    assert load_clip(out / "model.pt", device="cpu").tokenizer is not None
    with open(out / "log.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows[-1]["epoch"] == "1" and rows[-1]["protocol"] == "all6"


_DDP_SCRIPT = """
import os, sys, torch
from medclipsam.data import CaptionDataset
from medclipsam.config import FinetuneConfig
from medclipsam.finetune import finetune
from medclipsam.models import load_clip
csv_path, out = sys.argv[1], sys.argv[2]
clip = load_clip("toy", device="cpu")
cfg = FinetuneConfig(out_dir=os.path.join(out, "run"), batch_size=4, epochs=1, lr=5e-4,
                     warmup_steps=1, num_workers=0, progress=False, eval_before=False,
                     device="cpu")
res = finetune(clip, CaptionDataset(csv_path, split="train"),
               CaptionDataset(csv_path, split="val"), cfg)
rank = int(os.environ["RANK"])
torch.save({k: v.detach() for k, v in clip.model.state_dict().items()},
           os.path.join(out, f"rank{rank}.pt"))
# one file per rank: the two processes' stdout interleaves ("RANKRANK 1 ...")
with open(os.path.join(out, f"rank{rank}.steps"), "w") as fh:
    fh.write(str(res["global_step"]))
"""


def test_ddp_two_gloo_processes(pairs, tmp_path):
    script = tmp_path / "ddp_run.py"
    script.write_text(textwrap.dedent(_DDP_SCRIPT))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(script), str(pairs), str(tmp_path)],
        capture_output=True, text=True, timeout=1800, env=env, cwd=tmp_path,  # only a hang
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # 24 pairs over 2 processes, 4 per batch: 3 steps each
    assert [(tmp_path / f"rank{r}.steps").read_text() for r in (0, 1)] == ["3", "3"]
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    run = tmp_path / "run"
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_00000003.pt"]
    assert not list(run.glob(".*part*"))  # no leftovers of concurrent writers
    saved = load_clip(run / "model.pt", device="cpu").model.state_dict()
    init = load_clip("toy", device="cpu").model.state_dict()
    assert all(torch.equal(saved[k], r0[k]) for k in r0)
    assert not all(torch.equal(init[k], r0[k]) for k in r0)
