"""The bad-input corpus (issue 15) in the pipeline and on the command line: constant and very
large images, empty prompts, folders with unreadable files, torn results tables and one-line CLI
errors. Fixtures are written by the tests themselves (tmp_path)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medclipsam.cli import main
from medclipsam.data import PhantomDataset
from medclipsam.data.io import ImageReadError
from medclipsam.metrics import dice

ROOT = Path(__file__).resolve().parents[1]
# Subprocesses load torch and the toy models; on a loaded 2-core machine that alone can take
# minutes. The limit only catches a hang.
TIMEOUT = 1800


def _phantoms(n: int = 3, size: int = 128):
    return list(PhantomDataset("breast", n, seed=7, size=size, split="test", normal_fraction=0.0))


def _mixed_folder(folder: Path, n_good: int = 3) -> list[str]:
    """``n_good`` phantom images plus a truncated PNG, a fake PNG and a dangling link."""
    folder.mkdir(parents=True)
    good = []
    for i, s in enumerate(_phantoms(n_good)):
        Image.fromarray(s.image).save(folder / f"case{i}.png")
        good.append(f"case{i}")
    data = (folder / "case0.png").read_bytes()
    (folder / "b_truncated.png").write_bytes(data[: len(data) // 3])
    (folder / "c_fake.png").write_text("this is not a PNG\n")
    (folder / "d_moved.png").symlink_to(folder.parent / "elsewhere" / "d_moved.png")
    return good


def _table(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# --------------------------------------------------------------------------------------------
# one image


def test_a_constant_image_is_flagged_not_segmented(standin_pipe):
    flat = np.full((96, 128), 77, np.uint8)
    with pytest.warns(UserWarning, match="constant image"):
        res = standin_pipe.predict(flat, "breast tumor")
    assert res.flags == ("constant_image",)
    assert res.mask.shape == (96, 128) and not res.mask.any() and res.boxes is None
    assert res.row()["flags"] == "constant_image"
    teal = np.zeros((40, 50, 3), np.uint8) + np.array([0, 128, 128], np.uint8)  # one colour
    with pytest.warns(UserWarning, match=r"constant image \(every pixel \[0, 128, 128\]\)"):
        assert standin_pipe.predict(teal, "breast tumor").flags == ("constant_image",)


def test_empty_prompts_are_refused(standin_pipe, tmp_path):
    s = _phantoms(1)[0]
    for bad in ("", "   ", "\t\n"):
        with pytest.raises(ValueError, match="empty prompt"):
            standin_pipe.predict(s.rgb, bad)
        with pytest.raises(ValueError, match="empty prompt"):
            standin_pipe.run_folder(tmp_path, bad, tmp_path / "out", progress=False)


def test_a_large_image_is_processed_at_a_working_size_and_mapped_back(standin_pipe):
    # A 256 px phantom blown up to 1024 px, segmented with max_side=256: the pipeline works on
    # the shrunk picture (where the small models are at home) and maps everything back, so the
    # result is the working picture's result at four times the size.
    s = PhantomDataset("breast", 1, seed=3, size=256, split="test", normal_fraction=0.0)[0]
    big = np.asarray(Image.fromarray(s.image).resize((1024, 1024), Image.BILINEAR))
    big_gt = np.asarray(Image.fromarray(s.mask).resize((1024, 1024), Image.NEAREST))
    work = np.array(Image.fromarray(big).resize((256, 256), Image.BOX, reducing_gap=3.0))
    small = standin_pipe.predict(work, "breast tumor", sam_prompt_mode="box+points")
    with pytest.warns(UserWarning, match="larger than max_side=256"):
        res = standin_pipe.predict(big, "breast tumor", max_side=256, sam_prompt_mode="box+points")
    assert "large_image_downscaled" in res.flags
    assert res.mask.shape == res.saliency.shape == res.coarse_mask.shape == (1024, 1024)
    assert dice(res.mask, big_gt) > 0.8
    up = np.asarray(Image.fromarray(small.mask).resize((1024, 1024), Image.NEAREST))
    assert dice(res.mask, up) > 0.97 and res.sam_score == pytest.approx(small.sam_score)
    # boxes (inclusive pixels) and points (pixel centres) in full-image coordinates
    b = small.boxes.astype(float)
    want = np.stack([b[:, 0] * 4, b[:, 1] * 4, (b[:, 2] + 1) * 4 - 1, (b[:, 3] + 1) * 4 - 1], 1)
    assert np.allclose(res.boxes, want)
    assert np.allclose(res.points, (small.points + 0.5) * 4 - 0.5)
    # max_side=None keeps full resolution
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        full = standin_pipe.predict(s.image, "breast tumor", max_side=None)
    assert "large_image_downscaled" not in full.flags
    with pytest.raises(ValueError, match="max_side"):
        standin_pipe.predict(s.image, "breast tumor", max_side=4)


# --------------------------------------------------------------------------------------------
# folders


def test_a_folder_run_records_bad_files_and_goes_on(standin_pipe, tmp_path):
    good = _mixed_folder(tmp_path / "images")
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match=r"3 of 6 image\(s\) failed") as caught:
        rows = standin_pipe.run_folder(tmp_path / "images", "breast tumor", out, progress=False)
    summary = str([w.message for w in caught if "failed" in str(w.message)][0])
    for name in ("b_truncated.png", "c_fake.png", "d_moved.png"):
        assert name in summary
    by_id = {r["id"]: r for r in rows}
    assert [by_id[g]["status"] for g in good] == ["ok"] * 3
    assert "truncated" in by_id["b_truncated"]["error"]
    assert "not a readable .png" in by_id["c_fake"]["error"]
    assert "broken symbolic link" in by_id["d_moved"]["error"]
    table = {r["id"]: r for r in _table(out / "results.csv")}
    assert set(table) == set(by_id) and table["c_fake"]["status"] == "failed"
    assert sorted(p.name for p in (out / "masks").iterdir()) == [f"{g}.png" for g in good]
    # A rerun keeps what finished and retries only the failures; a fixed file then succeeds.
    Image.fromarray(_phantoms(1)[0].image).save(tmp_path / "images" / "c_fake.png")
    calls = standin_pipe.session.encoder_calls
    with pytest.warns(UserWarning, match=r"2 of 3 image\(s\) failed"):
        rows = standin_pipe.run_folder(tmp_path / "images", "breast tumor", out, progress=False)
    assert standin_pipe.session.encoder_calls == calls + 1  # only the repaired image was encoded
    assert {r["id"]: r["status"] for r in rows}["c_fake"] == "ok"
    assert len(_table(out / "results.csv")) == 6


def test_strict_stops_at_the_first_bad_file_and_keeps_what_finished(standin_pipe, tmp_path):
    _mixed_folder(tmp_path / "images")
    out = tmp_path / "out"
    with pytest.raises(ImageReadError, match="b_truncated.png"):
        standin_pipe.run_folder(tmp_path / "images", "breast tumor", out, progress=False, strict=True)
    table = _table(out / "results.csv")
    assert [(r["id"], r["status"]) for r in table] == [("b_truncated", "failed")]
    # sorted order: b_truncated comes before case0..2, which were never started; a lenient
    # rerun does them and retries the bad file
    with pytest.warns(UserWarning, match="failed"):
        rows = standin_pipe.run_folder(tmp_path / "images", "breast tumor", out, progress=False)
    assert sum(r["status"] == "ok" for r in rows) == 3


def test_resume_drops_a_torn_last_row_redoes_its_image_and_cleans_temporaries(standin_pipe, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i, s in enumerate(_phantoms(3)):
        Image.fromarray(s.image).save(folder / f"case{i}.png")
    out = tmp_path / "out"
    first = standin_pipe.run_folder(folder, "breast tumor", out, progress=False)
    raw = (out / "results.csv").read_bytes()
    assert raw.endswith(b"\r\n") and raw.count(b"\n") == 4  # header + three whole rows
    # power loss in the middle of the last row, plus a mask write killed half-way
    (out / "results.csv").write_bytes(raw[: raw.rindex(b"case2") + 30])
    stale = out / "masks" / ".case2.k3j_x9q1.part.png"
    stale.write_bytes(b"half a PNG")
    standin_pipe.predict(_phantoms(1, size=96)[0].rgb, "breast tumor")  # the session forgets case2
    calls = standin_pipe.session.encoder_calls
    with pytest.warns(UserWarning, match="torn last row"):
        rows = standin_pipe.run_folder(folder, "breast tumor", out, progress=False)
    assert standin_pipe.session.encoder_calls == calls + 1  # case2 redone, case0/1 kept
    assert [r["id"] for r in rows] == ["case0", "case1", "case2"]
    table = _table(out / "results.csv")
    assert [r["id"] for r in table] == ["case0", "case1", "case2"]
    assert all(r["status"] == "ok" and r["mask_file"] for r in table)
    assert table[2]["mask_area"] == str(first[2]["mask_area"])
    assert not stale.exists()


# --------------------------------------------------------------------------------------------
# the command line


class NotAWeight:
    """A pickled object in a checkpoint: what weights_only loading refuses."""


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "medclipsam", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=TIMEOUT, env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.mark.heavy
def test_segment_over_a_folder_with_bad_files_names_them_and_exits_1(tmp_path):
    _mixed_folder(tmp_path / "images")
    out = tmp_path / "seg"
    proc = _cli("segment", "--images", str(tmp_path / "images"), "--prompt", "breast tumor",
                "--out", str(out), "--quiet")
    print(proc.stdout + proc.stderr)  # the run as a user sees it (pytest -s)
    assert proc.returncode == 1, proc.stderr
    assert "3 images segmented" in proc.stdout
    assert "3 image(s) failed" in proc.stderr
    for name in ("b_truncated.png", "c_fake.png", "d_moved.png"):
        assert name in proc.stderr
    assert "Traceback" not in proc.stderr
    statuses = {r["id"]: r["status"] for r in _table(out / "results.csv")}
    assert sorted(statuses.values()) == ["failed"] * 3 + ["ok"] * 3
    strict = _cli("segment", "--images", str(tmp_path / "images"), "--prompt", "breast tumor",
                  "--out", str(tmp_path / "strict"), "--quiet", "--strict")
    assert strict.returncode == 2
    lines = strict.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "b_truncated.png" in lines[0]


def test_every_subcommand_gives_one_line_errors_before_any_model_loads(tmp_path):
    # One interpreter runs all the cases; none of them may import the model libraries.
    masks = tmp_path / "masks"
    masks.mkdir()
    empty = tmp_path / "empty"
    empty.mkdir()
    Image.new("L", (8, 8), 255).save(masks / "a.png")
    (tmp_path / "notes.txt").write_text("x")
    nope = str(tmp_path / "nope")
    cases = [
        ["segment", "--images", nope, "--prompt", "tumor", "--out", str(tmp_path / "o")],
        ["segment", "--images", str(masks), "--prompt", "  ", "--out", str(tmp_path / "o")],
        ["segment", "--images", str(empty), "--prompt", "tumor", "--out", str(tmp_path / "o")],
        ["segment", "--images", str(masks), "--prompt", "tumor", "--out", str(tmp_path / "notes.txt")],
        ["segment", "--images", str(masks), "--prompt", "tumor", "--out", str(tmp_path / "o"),
         "--sam", str(tmp_path / "missing.pth")],
        ["segment", "--images", str(masks), "--prompt", "tumor", "--out", str(tmp_path / "o"),
         "--clip", str(tmp_path / "missing.pt")],
        ["segment", "--images", str(masks), "--prompt", "tumor", "--out", str(tmp_path / "o"),
         "--limit", "0"],
        ["segment", "--images", str(masks), "--prompt", "tumor", "--out", str(tmp_path / "o"),
         "--threshold", "3"],
        ["segment", "--images", str(masks), "--out", str(tmp_path / "o")],
        ["pseudo-label", "--images", nope, "--prompt", "tumor", "--out", str(tmp_path / "o")],
        ["pseudo-label", "--images", str(masks), "--prompt", "tumor", "--out", str(tmp_path / "o"),
         "--split", "train"],
        ["train-weak", "--images", nope, "--masks", str(masks), "--out", str(tmp_path / "o")],
        ["train-weak", "--images", str(masks), "--masks", str(masks), "--out", str(tmp_path / "o"),
         "--epochs", "0"],
        ["reproduce", "--task", "breast", "--data", nope, "--out", str(tmp_path / "o")],
        ["evaluate", "--pred", nope, "--gt", str(masks)],
        ["evaluate", "--pred", str(masks), "--gt", str(empty)],
        ["phantom", "--n", "0", "--out", str(tmp_path / "o")],
        ["demo", "--n", "0", "--out", str(tmp_path / "o")],
        ["finetune", "--captions", str(tmp_path / "none.csv"), "--out", str(tmp_path / "o")],
        ["segment", "--images", str(masks), "--prompt", "tumor", "--out", "o", "--bogus"],
    ]
    code = textwrap.dedent(f"""
        import contextlib, io, json, sys
        from medclipsam.cli import main
        out = []
        for argv in {cases!r}:
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                try:
                    rc = main(argv)
                except SystemExit as e:
                    rc = e.code
            out.append([argv, rc, err.getvalue()])
        heavy = [m for m in ("open_clip", "segment_anything", "medclipsam.models.clip",
                             "medclipsam.models.sam", "monai") if m in sys.modules]
        print(json.dumps({{"cases": out, "heavy": heavy}}))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=TIMEOUT, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    import json

    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["heavy"] == [], result["heavy"]
    for argv, rc, err in result["cases"]:
        lines = err.strip().splitlines()
        assert rc == 2, (argv, rc, err)
        assert len(lines) == 1 and lines[0].startswith("error: "), (argv, err)
    errs = [err for _, _, err in result["cases"]]
    assert "nope: folder not found" in errs[0] and "empty" in errs[1]
    assert "no image files" in errs[2] and "not a folder" in errs[3]
    assert "missing.pth" in errs[4] and "missing.pt" in errs[5]
    assert "--limit must be at least 1" in errs[6] and "--threshold" in errs[7]
    assert "required: --prompt" in errs[8] and "splits.json" in errs[10]
    assert "--allow-missing" in errs[15] and "--bogus" in errs[19]


def test_a_refused_checkpoint_is_one_line_on_the_command_line(tmp_path):
    import torch

    bad = tmp_path / "sam_from_the_internet.pth"
    torch.save({"model": NotAWeight()}, bad)
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(_phantoms(1)[0].image).save(folder / "a.png")
    proc = _cli("segment", "--images", str(folder), "--prompt", "breast tumor",
                "--out", str(tmp_path / "o"), "--sam", str(bad), cwd=ROOT)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and str(bad) in lines[0] and "refused" in lines[0]
    assert "likely succeed" not in proc.stderr


def test_evaluate_pairing_error_mentions_allow_missing(tmp_path, capsys):
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir()
    gt.mkdir()
    for name in ("a", "b"):
        Image.new("L", (8, 8), 255).save(gt / f"{name}.png")
    Image.new("L", (8, 8), 255).save(pred / "a.png")  # b failed, so it has no prediction
    assert main(["evaluate", "--pred", str(pred), "--gt", str(gt)]) == 2
    err = capsys.readouterr().err
    assert "without a prediction: b" in err and "--allow-missing" in err
    assert main(["evaluate", "--pred", str(pred), "--gt", str(gt), "--allow-missing",
                 "--n-boot", "10"]) == 0
