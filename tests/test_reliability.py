"""Issue 26, the last mile of reliability: nothing skipped in silence, every refusal in the user's
words. Each test writes its own files (tmp_path) and checks what a user would see: the message
names the file (and line) and says what to do; a folder run accounts for every file."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from bad_inputs import HTML_PAGE, LFS_POINTER, TINY_CLIP, clip_folder, pickled_weights
from PIL import Image

from medclipsam.data.datasets import CaptionDataset, FolderDataset, pair_by_stem
from medclipsam.data.io import ImageReadError, read_image, read_mask

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 1800  # subprocesses load torch; the limit only catches a hang


def _png(path: Path, size: tuple[int, int] = (8, 6), value: int = 10) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", size, value).save(path)
    return path


def _captions(tmp_path: Path, text: str | bytes, images=("a.png", "b.png", "c.png")) -> Path:
    for n in images:
        _png(tmp_path / n)
    path = tmp_path / "captions.csv"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "MEDCLIPSAM_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "medclipsam", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT)


# --------------------------------------------------------------------------------------------
# 3. caption CSVs


def test_finetune_with_a_latin1_csv_names_the_file_and_line(tmp_path):
    """The command line reads the header (has_split_column) before the data set's own checks:
    that read must give the same clear error, not a bare codec error."""
    path = _captions(tmp_path, "image,caption,split\na.png,chest x-ray,train\n"
                               "b.png,l\xe9sion du sein,train\n".encode("latin-1"))
    with pytest.raises(ValueError) as err:
        CaptionDataset.has_split_column(path)
    assert f"{path}, line 3" in str(err.value) and "UTF-8" in str(err.value)
    run = _cli("finetune", "--captions", str(path), "--out", str(tmp_path / "ft"), cwd=tmp_path)
    assert run.returncode == 2, run.stderr
    assert run.stderr.startswith("error: ") and f"{path}, line 3" in run.stderr
    assert "iconv" in run.stderr and "Traceback" not in run.stderr
    assert "codec can't decode" not in run.stderr


def test_a_caption_quoted_over_several_lines_is_accepted(tmp_path):
    path = _captions(tmp_path, 'image,caption\na.png,"Transverse view: hypoechoic mass,\n'
                               'irregular margins"\nb.png,"the ""lungs"", clear"\n')
    ds = CaptionDataset(path)
    assert ds.captions == ["Transverse view: hypoechoic mass, irregular margins",
                           'the "lungs", clear']
    # an unclosed quote that swallows rows is still refused, naming the lines
    path = _captions(tmp_path, 'image,caption\na.png,"chest x-ray\nb.png,breast\nc.png,brain\n')
    with pytest.raises(ValueError, match=r"lines 2-4: .*unclosed quote"):
        CaptionDataset(path)


def test_every_problem_of_a_caption_csv_is_listed_with_its_line(tmp_path):
    path = _captions(tmp_path, "image,caption\na.png,chest x-ray\nb.png,mass, left breast\n"
                               "c.png,\n,no image named\ngone.png,a lung\n")
    with pytest.raises(ValueError) as err:
        CaptionDataset(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: 4 problems")
    for part in ("line 3: 3 field(s)", "empty caption on line(s) 4", "line 5: empty 'image'",
                 "line 6: image file", "gone.png not found"):
        assert part in msg, (part, msg)
    assert msg.index("line 3") < msg.index("line(s) 4") < msg.index("line 5") < msg.index("line 6")


def test_a_missing_image_names_its_line(tmp_path):
    path = _captions(tmp_path, "image,caption\na.png,chest x-ray\ngone.png,a lung\n")
    with pytest.raises(FileNotFoundError) as err:
        CaptionDataset(path)
    assert str(path) in str(err.value) and "line 3: " in str(err.value)
    assert "gone.png" in str(err.value)


# --------------------------------------------------------------------------------------------
# 4. names that differ only by Unicode normalisation


def test_an_nfd_image_pairs_with_its_nfc_mask(tmp_path):
    nfd = unicodedata.normalize("NFD", "lésion_01")
    nfc = unicodedata.normalize("NFC", "lésion_01")
    assert nfd != nfc
    _png(tmp_path / "images" / f"{nfd}.png")
    _png(tmp_path / "masks" / f"{nfc}_mask.png", value=255)
    pairs, report = pair_by_stem(tmp_path / "images", tmp_path / "masks")
    assert len(pairs) == 1 and report["missing_masks"] == [] and report["extra_masks"] == []
    ds = FolderDataset(tmp_path)
    assert len(ds) == 1 and ds[0]["mask"].all()
    assert ds.stems == [nfc]


def test_case_is_only_folded_where_the_file_system_ignores_it(tmp_path):
    from medclipsam.data.datasets import case_insensitive

    _png(tmp_path / "images" / "Case1.png")
    _png(tmp_path / "masks" / "case1.png")
    if case_insensitive(tmp_path / "images"):  # macOS / Windows: one name, one file
        assert len(pair_by_stem(tmp_path / "images", tmp_path / "masks")[0]) == 1
    else:  # here "Case1" and "case1" are two different files: not silently paired
        report = pair_by_stem(tmp_path / "images", tmp_path / "masks", strict=False)[1]
        assert report["missing_masks"] == ["Case1"] and report["extra_masks"] == ["case1"]


# --------------------------------------------------------------------------------------------
# 5. sizes, web pages and LFS pointers, 5-D NIfTI, DICOM without pixel data


def test_a_mask_of_another_size_raises_the_projects_error_naming_both_files(tmp_path):
    from medclipsam.data.io import SizeMismatchError

    image = _png(tmp_path / "images" / "a.png", size=(8, 6))
    mask = _png(tmp_path / "masks" / "a.png", size=(7, 6), value=255)
    with pytest.raises(SizeMismatchError) as err:
        FolderDataset(tmp_path)[0]
    assert isinstance(err.value, ImageReadError) and err.value.path == mask
    assert str(mask) in str(err.value) and str(image) in str(err.value)
    assert "6x7 (HxW)" in str(err.value) and "6x8" in str(err.value)

    from medclipsam.metrics import evaluate_folders

    with pytest.raises(SizeMismatchError, match="predictions must be at the image's size"):
        evaluate_folders(tmp_path / "masks", tmp_path / "images")


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif", ".nii.gz", ".dcm"])
def test_an_lfs_pointer_or_a_web_page_saved_as_an_image_says_what_it_is(tmp_path, suffix):
    pointer = tmp_path / f"scan{suffix}"
    pointer.write_text(LFS_POINTER)
    for read in (read_image, read_mask):
        with pytest.raises(ImageReadError) as err:
            read(pointer)
        msg = str(err.value)
        assert str(pointer) in msg and "Git LFS pointer" in msg and "git lfs pull" in msg
    page = tmp_path / f"page{suffix}"
    page.write_text(HTML_PAGE)
    with pytest.raises(ImageReadError) as err:
        read_image(page)
    msg = str(err.value)
    assert str(page) in msg and "HTML web page" in msg and "Download it again" in msg


def test_a_5d_nifti_is_refused_naming_the_file_and_its_shape(tmp_path):
    import nibabel as nib

    path = tmp_path / "tensor.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 3, 1, 6), np.float32), np.eye(4)), str(path))
    with pytest.raises(ImageReadError) as err:
        read_image(path)
    msg = str(err.value)
    assert str(path) in msg and "5-D NIfTI" in msg and "(4, 5, 3, 1, 6)" in msg
    # trailing singleton dimensions still read as before
    single = tmp_path / "single.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((4, 5, 3, 1, 1), np.float32), np.eye(4)), str(single))
    assert read_image(single).shape == (5, 4, 3)


def test_a_preamble_less_dicom_without_pixel_data_says_so(tmp_path):
    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid

    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR: a report, no image
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.Modality = "SR"
    ds.PatientID = "anon"
    path = tmp_path / "report.dcm"
    ds.save_as(path, implicit_vr=True, little_endian=True)  # no preamble, no file meta
    assert path.read_bytes()[128:132] != b"DICM"
    with pytest.raises(ImageReadError) as err:
        read_image(path)
    assert str(path) in str(err.value) and "has no pixel data" in str(err.value)
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ImageReadError, match="not a valid DICOM file|corrupt or unreadable DICOM"):
        read_image(junk)


# --------------------------------------------------------------------------------------------
# 2. weight files that are unsafe or unreadable, on every loading path

def _assert_refusal_in_users_words(msg: str, path: Path) -> None:
    assert str(path) in msg and "refused" in msg and "pickled" in msg, msg
    assert "state_dict" in msg and ".safetensors" in msg  # the safe alternative
    assert "likely succeed" not in msg and "Do not load a file you do not trust" in msg


def test_a_pickled_weight_file_in_a_clip_folder_is_refused_by_name(tmp_path):
    from medclipsam.models.clip import CheckpointError, load_clip

    folder = clip_folder(tmp_path / "my-clip")
    weights = pickled_weights(folder / "open_clip_pytorch_model.bin")
    for name in (f"local-dir:{folder}", str(folder)):
        with pytest.raises(CheckpointError) as err:
            load_clip(name, device="cpu")
        _assert_refusal_in_users_words(str(err.value), weights)
    # a damaged .safetensors file (preferred over the .bin) is named too
    broken = folder / "open_clip_model.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(CheckpointError) as err:
        load_clip(f"local-dir:{folder}", device="cpu")
    assert str(broken) in str(err.value) and "Download it again" in str(err.value)


def test_a_pickled_weight_file_in_a_hub_snapshot_is_refused_by_name(tmp_path, monkeypatch):
    from hf_cache import use_hf_cache, write_hub_repo

    from medclipsam.models.clip import CheckpointError, load_clip

    snap = write_hub_repo(tmp_path / "hf", "someone/tiny-clip",
                          {"open_clip_config.json": json.dumps({"model_cfg": TINY_CLIP})})
    weights = pickled_weights(snap / "open_clip_pytorch_model.bin")
    use_hf_cache(monkeypatch, tmp_path / "hf")
    with pytest.raises(CheckpointError) as err:
        load_clip("hf-hub:someone/tiny-clip", device="cpu")
    _assert_refusal_in_users_words(str(err.value), weights)


def test_the_cli_refuses_a_pickled_clip_folder_in_one_line(tmp_path):
    folder = clip_folder(tmp_path / "my-clip")
    weights = pickled_weights(folder / "open_clip_pytorch_model.bin")
    _png(tmp_path / "images" / "a.png", size=(32, 32))
    run = _cli("segment", "--images", str(tmp_path / "images"), "--prompt", "breast tumor",
               "--out", str(tmp_path / "out"), "--clip", f"local-dir:{folder}", "--sam", "litemedsam",
               "--quiet", cwd=tmp_path)
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr and "UnpicklingError" not in run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1
    _assert_refusal_in_users_words(errors[0], weights)


# --------------------------------------------------------------------------------------------
# 1 and 6. folder runs: every file gets a row, empty masks are flagged, order survives a resume


def _phantom_folder(folder: Path, n: int = 3) -> list[str]:
    from medclipsam.data import PhantomDataset

    folder.mkdir(parents=True, exist_ok=True)
    ds = PhantomDataset("breast", n, seed=7, size=96, split="test", normal_fraction=0.0)
    for i, s in enumerate(ds):
        Image.fromarray(s.image).save(folder / f"case{i}.png")
    return [f"case{i}" for i in range(n)]


def _table(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_a_folder_run_gives_unsupported_files_a_row_and_a_warning(standin_pipe, tmp_path):
    good = _phantom_folder(tmp_path / "images", 2)
    Image.new("P", (40, 30)).save(tmp_path / "images" / "scan.gif")
    (tmp_path / "images" / "zz_notes.txt").write_text("taken on the old scanner\n")
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match=r"2 file\(s\) in .* skipped, unsupported format") as seen:
        rows = standin_pipe.run_folder(tmp_path / "images", "breast tumor", out, progress=False)
    shown = " ".join(str(w.message) for w in seen)
    assert "scan.gif" in shown and "zz_notes.txt" in shown
    by_id = {r["id"]: r for r in rows}
    assert by_id["scan.gif"]["status"] == "skipped: unsupported format .gif"
    assert by_id["zz_notes.txt"]["status"] == "skipped: unsupported format .txt"
    assert "convert it" in by_id["scan.gif"]["error"] and not by_id["scan.gif"]["mask_file"]
    ids = [r["id"] for r in _table(out / "results.csv")]
    assert ids == sorted([*good, "scan.gif", "zz_notes.txt"])
    # a resume neither redoes the images nor repeats the skipped rows
    calls = standin_pipe.session.encoder_calls
    with pytest.warns(UserWarning, match="skipped, unsupported format"):
        standin_pipe.run_folder(tmp_path / "images", "breast tumor", out, progress=False)
    assert standin_pipe.session.encoder_calls == calls
    assert [r["id"] for r in _table(out / "results.csv")] == ids


def test_rows_flag_an_empty_mask_and_a_mask_covering_the_image():
    from medclipsam.pipeline import SegmentationResult

    def result(mask: np.ndarray, flags: tuple[str, ...] = ()) -> SegmentationResult:
        zeros = np.zeros(mask.shape, np.float32)
        return SegmentationResult(prompt="breast tumor", saliency=zeros, coarse_mask=mask,
                                  boxes=None, points=None, point_labels=None, mask=mask,
                                  sam_score=0.83, flags=flags, timings={})

    empty = np.zeros((20, 30), bool)
    assert result(empty).row()["flags"] == "empty_mask"
    assert result(empty, ("fewer_components",)).row()["flags"] == "fewer_components empty_mask"
    assert result(empty, ("constant_image",)).row()["flags"] == "constant_image"  # explained
    full = np.ones((20, 30), bool)
    full[0, :5] = False
    assert result(full).row()["flags"] == "mask_covers_image"
    part = np.zeros((20, 30), bool)
    part[5:10, 5:10] = True
    assert result(part).row()["flags"] == ""


def test_folder_run_flags_match_the_masks_written(standin_pipe, tmp_path):
    _phantom_folder(tmp_path / "images", 4)
    out = tmp_path / "out"
    rows = standin_pipe.run_folder(tmp_path / "images", "breast tumor", out, progress=False)
    for r in rows:
        mask = read_mask(out / r["mask_file"])
        assert ("empty_mask" in r["flags"].split()) == (not mask.any()), r
        assert ("mask_covers_image" in r["flags"].split()) == (mask.mean() >= 0.98), r
        assert int(r["mask_area"]) == int(mask.sum())


def test_a_resume_that_redoes_a_deleted_mask_keeps_the_rows_in_order(standin_pipe, tmp_path):
    stems = _phantom_folder(tmp_path / "images", 3)
    out = tmp_path / "out"
    first = standin_pipe.run_folder(tmp_path / "images", "breast tumor", out, progress=False)
    (out / "masks" / "case1.png").unlink()
    calls = standin_pipe.session.encoder_calls
    rows = standin_pipe.run_folder(tmp_path / "images", "breast tumor", out, progress=False)
    assert standin_pipe.session.encoder_calls == calls + 1  # only case1 redone
    table = _table(out / "results.csv")
    assert [r["id"] for r in table] == stems == [r["id"] for r in rows]
    assert table[1]["mask_area"] == str(first[1]["mask_area"])
    assert (out / "results.csv").read_bytes().count(b"\n") == 4  # header + three rows, no copy


def test_segment_on_the_command_line_names_the_skipped_files(tmp_path):
    _phantom_folder(tmp_path / "images", 1)
    Image.new("P", (40, 30)).save(tmp_path / "images" / "scan.gif")
    run = _cli("segment", "--images", str(tmp_path / "images"), "--prompt", "breast tumor",
               "--out", str(tmp_path / "out"), "--quiet", "--threads", "1", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("1 images segmented")
    line = [s for s in run.stderr.splitlines() if "skipped" in s]
    assert len(line) == 1 and "1 file(s) skipped, unsupported format .gif" in line[0]
    assert "scan.gif" in line[0] and "Traceback" not in run.stderr
    table = _table(tmp_path / "out" / "results.csv")
    assert [(r["id"], r["status"]) for r in table] == [
        ("case0", "ok"), ("scan.gif", "skipped: unsupported format .gif")]


# --------------------------------------------------------------------------------------------
# found by the corpus run (benchmarks/bad_input_corpus.py)


def test_the_cli_prints_a_litemedsam_checkpoint_error_in_one_line(tmp_path, capsys):
    """LiteMedSamError is a RuntimeError: the CLI let it escape as a traceback."""
    from medclipsam.cli import main

    bad = tmp_path / "lite_medsam.pth"
    bad.write_bytes(np.random.default_rng(0).bytes(5000))
    _png(tmp_path / "images" / "a.png", size=(32, 32))
    rc = main(["segment", "--images", str(tmp_path / "images"), "--prompt", "breast tumor",
               "--out", str(tmp_path / "out"), "--sam", "litemedsam", "--sam-checkpoint", str(bad),
               "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and str(bad) in err[0]
    assert "not a PyTorch file" in err[0]


@pytest.mark.parametrize("content,says", [
    (LFS_POINTER, "Git LFS pointer"), (HTML_PAGE, "HTML web page"),
    (b"\x00\x01garbage" * 100, "not a PyTorch file"), (b"", "not a PyTorch file")],
    ids=["lfs", "html", "bytes", "empty"])
def test_a_weight_file_that_is_no_pytorch_file_is_called_what_it_is(tmp_path, content, says):
    """Random bytes, LFS pointers and web pages were described by the unpickler's
    'Unsupported operand 118'."""
    from medclipsam.models import load_clip, load_sam

    path = tmp_path / "weights.pth"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    loaders = (lambda: load_sam(path, device="cpu", download=False),
               lambda: load_sam("litemedsam", checkpoint=path, device="cpu"),
               lambda: load_clip(path, device="cpu"))
    for load in loaders:
        with pytest.raises(Exception) as err:
            load()
        msg = str(err.value)
        assert str(path) in msg and says in msg and "Unsupported operand" not in msg, msg


@pytest.mark.parametrize("obj", ["list", "no_tensors", "foreign"])
def test_a_clip_file_that_is_no_clip_checkpoint_names_the_file(tmp_path, obj):
    """A plain state dict is read as BiomedCLIP's architecture; when that cannot be built here
    (offline, no cache) the error named BiomedCLIP's config, not the user's file."""
    import torch

    from medclipsam.models.clip import CheckpointError, load_clip

    path = tmp_path / "my_clip.pt"
    torch.save({"list": [torch.zeros(3)], "no_tensors": {"model": {"epoch": 3}},
                "foreign": {"foo.weight": torch.zeros(3)}}[obj], path)
    with pytest.raises(CheckpointError) as err:
        load_clip(path, device="cpu")
    assert str(path) in str(err.value)


def test_warnings_of_the_dicom_reader_name_the_file(tmp_path):
    """pydicom's own warnings ('Expected explicit VR, but found implicit VR', excess padding)
    reached the user without the file's name."""
    import shutil

    from pydicom.data import get_testdata_file

    path = tmp_path / "scan.dcm"
    shutil.copyfile(get_testdata_file("MR_small_padded.dcm"), path)
    with pytest.warns(UserWarning) as seen:
        read_image(path)
    assert seen and all(str(w.message).startswith(f"{path}: ") for w in seen)


def test_a_folder_dataset_names_the_files_it_leaves_out(tmp_path):
    """FolderDataset dropped unsupported files, subfolders and (strict=False) duplicate stems
    and broken links with only an entry in .report."""
    _png(tmp_path / "images" / "a.png")
    _png(tmp_path / "masks" / "a.png", value=255)
    Image.new("P", (8, 6)).save(tmp_path / "images" / "scan.gif")
    _png(tmp_path / "images" / "more" / "b.png")
    with pytest.warns(UserWarning, match=r"left out of the data set .*more, scan\.gif"):
        ds = FolderDataset(tmp_path)
    assert ds.stems == ["a"]
    _png(tmp_path / "images" / "c.png")
    _png(tmp_path / "images" / "c.jpg")
    with pytest.warns(UserWarning, match=r"several files share a stem: c\.jpg, c\.png"):
        FolderDataset(tmp_path, strict=False)


def test_a_folder_run_gives_a_subfolder_a_row(standin_pipe, tmp_path):
    """A subfolder of the images folder (its images never read) had no row and no message."""
    _phantom_folder(tmp_path / "images", 1)
    _phantom_folder(tmp_path / "images" / "second_visit", 1)
    with pytest.warns(UserWarning, match="skipped, unsupported format or subfolder"):
        rows = standin_pipe.run_folder(tmp_path / "images", "breast tumor", tmp_path / "out",
                                       progress=False)
    by_id = {r["id"]: r for r in rows}
    assert by_id["second_visit"]["status"] == "skipped: subfolder"
    assert "not searched" in by_id["second_visit"]["error"]


def test_prepare_names_the_archive_of_another_data_set(tmp_path):
    """The error named the scratch folder it was extracted to (OUT/.source/...), not the zip."""
    import zipfile

    from medclipsam.data.sources import busi
    from medclipsam.data.sources._common import SourceFormatError

    archive = tmp_path / "downloads" / "Dataset_BUSI.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("chest_xray/readme.txt", "another data set\n")
    with pytest.raises(SourceFormatError) as err:
        busi.prepare(archive, tmp_path / "busi", progress=False)
    assert str(err.value).startswith(f"{archive} (extracted to ") and "does not look like BUSI" in str(err.value)


def test_a_very_elongated_image_gets_a_row_in_words(standin_pipe, tmp_path):
    """A 2x3000 image failed with PIL's raw 'ValueError: height and width must be > 0' (its short
    side vanished at SAM's input size)."""
    from medclipsam.sam_session import ImageShapeError

    thin = np.tile(np.arange(250, dtype=np.uint8), (2, 12))
    with pytest.raises(ImageShapeError, match=r"2x3000 pixels .* too elongated for SAM"):
        standin_pipe.predict(thin, "breast tumor")
    (tmp_path / "images").mkdir()
    Image.fromarray(thin).save(tmp_path / "images" / "strip.png")
    with pytest.warns(UserWarning, match="failed"):
        rows = standin_pipe.run_folder(tmp_path / "images", "breast tumor", tmp_path / "out",
                                       progress=False)
    assert rows[0]["status"] == "failed"
    assert rows[0]["error"].startswith("strip.png: image of 2x3000 pixels") and "Error" not in rows[0]["error"]
