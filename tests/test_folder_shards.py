"""Folder runs sharded over processes with torchrun: each process its share of the stems, one
results.csv at the end, resumable. Two CPU processes with gloo, as the DDP fine-tuning test runs
them; the masks are compared with a one-process run of the same folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medclipsam.data.io import read_mask
from medclipsam.data.phantom import write_phantom_folder
from medclipsam.folder_runs import read_results
from medclipsam.pipeline import MedCLIPSAM

REPO = Path(__file__).resolve().parents[1]
N = 6


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    write_phantom_folder(root / "data", "breast", N, seed=4, size=128)
    return root / "data" / "images"


def _torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "medclipsam", *args],
        capture_output=True, text=True, timeout=1200, env=env, cwd=cwd,  # only a hang
    )


@pytest.mark.heavy
def test_segment_under_torchrun_splits_the_stems_and_merges_one_results_csv(folder, tmp_path):
    pipe = MedCLIPSAM.offline(device="cpu")
    stems = sorted(p.stem for p in folder.iterdir())
    # an interrupted sharded run: rank 1 of an earlier run finished two images, then died
    early = stems[1:4:2]
    out = tmp_path / "out"
    pipe.run_folder(folder, "breast tumor", out, task="breast", stems=early, progress=False)
    (out / "results.csv").rename(out / "results.part1.csv")
    before = {s: (out / "masks" / f"{s}.png").stat().st_mtime_ns for s in early}

    cmd = ["segment", "--images", str(folder), "--prompt", "breast tumor", "--out", str(out),
           "--task", "breast", "--device", "cpu", "--quiet"]  # the offline world: the defaults
    proc = _torchrun(cmd, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    rows = read_results(out / "results.csv")
    assert sorted(r["id"] for r in rows) == stems and all(r["status"] == "ok" for r in rows)
    assert not list(out.glob("results.part*.csv"))  # merged, nothing left over
    # resumed: the two finished images were not redone
    assert {s: (out / "masks" / f"{s}.png").stat().st_mtime_ns for s in early} == before
    # the images the shards segmented: the same masks as one process gives them
    single = tmp_path / "single"
    sharded = [s for s in stems if s not in early]
    pipe.run_folder(folder, "breast tumor", single, task="breast", stems=sharded, progress=False)
    for s in sharded:
        assert np.array_equal(read_mask(out / "masks" / f"{s}.png"),
                              read_mask(single / "masks" / f"{s}.png")), s
    # run again (in this process: the resume rule is the same with or without shards): everything
    # is finished, nothing is redone, results.csv unchanged
    text = (out / "results.csv").read_text()
    masks = {s: (out / "masks" / f"{s}.png").stat().st_mtime_ns for s in stems}
    calls = pipe.session.encoder_calls
    pipe.run_folder(folder, "breast tumor", out, task="breast", progress=False)
    assert pipe.session.encoder_calls == calls
    assert (out / "results.csv").read_text() == text
    assert {s: (out / "masks" / f"{s}.png").stat().st_mtime_ns for s in stems} == masks


def test_a_shard_without_torchrun_is_refused(folder, tmp_path, monkeypatch):
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    from toy_sam import standin_pipeline

    pipe = standin_pipeline()
    with pytest.raises(RuntimeError, match="torchrun"):
        pipe.run_folder(folder, "breast tumor", tmp_path / "o", shard=(0, 2), progress=False)
    with pytest.raises(ValueError, match="rank"):
        pipe.run_folder(folder, "breast tumor", tmp_path / "o", shard=(2, 2), progress=False)
