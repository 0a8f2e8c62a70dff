"""Folder data sets paired by stem, caption CSVs and splits, on real files."""

from __future__ import annotations

import json
import random
from collections import Counter

import numpy as np
import pytest

from medclipsam.data import datasets as ds_mod
from medclipsam.data.datasets import (
    CaptionDataset,
    FolderDataset,
    PairingError,
    SplitError,
    load_split,
    make_split,
    pair_by_stem,
    write_split,
)
from medclipsam.data.io import write_image, write_mask


def _image(value: int, shape=(12, 16)) -> np.ndarray:
    return np.full(shape, value, np.uint8)


def _mask(value: int, shape=(12, 16)) -> np.ndarray:
    """A mask whose foreground size encodes ``value``, to check which mask came with which image."""
    m = np.zeros(shape, bool)
    m.flat[:value] = True
    return m


def _make_folder(root, stems, *, mask_suffix="", mask_stems=None, order_seed=0):
    """Create root/images and root/masks in a shuffled order; image i has value 10*i+1."""
    mask_stems = list(stems) if mask_stems is None else list(mask_stems)
    jobs = [("image", s) for s in stems] + [("mask", s) for s in mask_stems]
    random.Random(order_seed).shuffle(jobs)
    for kind, stem in jobs:
        value = 10 * int(stem.split("_")[-1]) + 1
        if kind == "image":
            write_image(root / "images" / f"{stem}.png", _image(value))
        else:
            write_mask(root / "masks" / f"{stem}{mask_suffix}.png", _mask(value))
    return root


STEMS = [f"case_{i}" for i in range(1, 9)]


@pytest.mark.parametrize("order_seed", [0, 1, 2])
@pytest.mark.parametrize("mask_suffix", ["", "_mask"])
def test_pairing_by_stem_not_by_order(tmp_path, order_seed, mask_suffix):
    root = _make_folder(tmp_path, STEMS, mask_suffix=mask_suffix, order_seed=order_seed)
    pairs, report = pair_by_stem(root / "images", root / "masks")
    assert [p[0].name for p in pairs] == [f"{s}.png" for s in sorted(STEMS)]
    for img, msk in pairs:
        assert msk.name == f"{img.stem}{mask_suffix}.png"
    assert report["missing_masks"] == [] and report["extra_masks"] == []
    assert report["duplicates"] == []

    ds = FolderDataset(root)
    assert ds.stems == sorted(STEMS) and len(ds) == len(STEMS)
    for item in ds:
        value = int(item["image"][0, 0, 0])  # 10*i + 1
        assert item["image"].dtype == np.uint8 and item["image"].shape == (12, 16, 3)
        assert item["mask"].dtype == bool
        assert int(item["mask"].sum()) == value  # the right mask came with the image
        assert (
            item["stem"] == item["image_path"].stem == file_stem_of(item["mask_path"], mask_suffix)
        )


def file_stem_of(path, suffix):
    name = path.stem
    return name[: len(name) - len(suffix)] if suffix else name


def test_pairing_mixed_formats_and_nifti_suffix(tmp_path):
    import nibabel as nib

    write_image(tmp_path / "images" / "a.jpg", np.zeros((8, 8, 3), np.uint8))
    write_mask(tmp_path / "masks" / "a_mask.png", np.ones((8, 8), bool))
    vol = np.zeros((8, 8, 3), np.int16)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "images" / "b.v2.nii.gz")
    nib.save(nib.Nifti1Image(vol.astype(np.uint8), np.eye(4)), tmp_path / "masks" / "b.v2.nii.gz")
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    (tmp_path / "images" / ".DS_Store").write_bytes(b"\0")
    pairs, report = pair_by_stem(tmp_path / "images", tmp_path / "masks")
    assert [(i.name, m.name) for i, m in pairs] == [
        ("a.jpg", "a_mask.png"),
        ("b.v2.nii.gz", "b.v2.nii.gz"),
    ]
    assert report["ignored"] == ["notes.txt"]


def test_missing_and_extra_masks(tmp_path):
    root = _make_folder(
        tmp_path, ["case_1", "case_2", "case_3"], mask_stems=["case_1", "case_3", "case_9"]
    )
    with pytest.raises(PairingError) as info:
        pair_by_stem(root / "images", root / "masks")
    message = str(info.value)
    assert "without a mask: case_2" in message and "without an image: case_9" in message
    assert info.value.report["missing_masks"] == ["case_2"]

    pairs, report = pair_by_stem(root / "images", root / "masks", strict=False)
    assert [i.stem for i, _ in pairs] == ["case_1", "case_3"]
    assert report["missing_masks"] == ["case_2"] and report["extra_masks"] == ["case_9"]

    with pytest.raises(PairingError, match="case_2"):
        FolderDataset(root)
    loose = FolderDataset(root, strict=False)
    assert loose.stems == ["case_1", "case_2", "case_3"]
    assert loose[1]["mask"] is None and loose[1]["mask_path"] is None
    assert loose[0]["mask"] is not None


def test_duplicates_are_errors(tmp_path):
    root = _make_folder(tmp_path, ["case_1", "case_2"])
    write_image(root / "images" / "case_1.jpg", _image(5))
    with pytest.raises(PairingError, match=r"case_1 \(case_1.jpg, case_1.png\)"):
        pair_by_stem(root / "images", root / "masks")
    pairs, report = pair_by_stem(root / "images", root / "masks", strict=False)
    assert report["duplicates"] == ["case_1"] and [i.stem for i, _ in pairs] == ["case_2"]

    # One image, two candidate masks (x.png and x_mask.png) is ambiguous too.
    other = _make_folder(tmp_path / "o", ["case_1"])
    write_mask(other / "masks" / "case_1_mask.png", _mask(3))
    with pytest.raises(PairingError, match="case_1_mask.png"):
        pair_by_stem(other / "images", other / "masks")


def test_empty_and_missing_folders(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(PairingError, match="no image files"):
        pair_by_stem(tmp_path / "images", tmp_path / "masks")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        pair_by_stem(tmp_path / "nowhere", tmp_path / "masks")
    with pytest.raises(FileNotFoundError, match="images"):
        FolderDataset(tmp_path / "masks")


def test_shape_mismatch_names_both_files(tmp_path):
    write_image(tmp_path / "images" / "a.png", _image(1, (10, 10)))
    write_mask(tmp_path / "masks" / "a.png", _mask(3, (10, 12)))
    ds = FolderDataset(tmp_path)
    with pytest.raises(ValueError, match=r"masks/a.png.*images/a.png"):
        ds[0]


def test_image_only_folder_and_transform(tmp_path):
    write_image(tmp_path / "images" / "b.png", _image(7))
    write_image(tmp_path / "images" / "a.png", _image(3))
    ds = FolderDataset(tmp_path, mode="grey", transform=lambda s: (s["stem"], s["image"].shape))
    assert ds.stems == ["a", "b"] and not ds.has_masks
    assert ds[0] == ("a", (12, 16)) and ds[-1] == ("b", (12, 16))
    plain = FolderDataset(tmp_path)
    assert plain[1]["mask"] is None and int(plain[1]["image"][0, 0, 0]) == 7


def test_split_selection(tmp_path):
    root = _make_folder(tmp_path, STEMS)
    splits = make_split(STEMS, {"train": 0.5, "test": 0.5}, seed=3)
    write_split(root / "splits.json", splits, name="toy", seed=3, rule="half/half")
    test = FolderDataset(root, split="test")
    assert test.stems == splits["test"] and len(test) == 4
    with pytest.raises(SplitError, match="'val'.*test, train"):
        FolderDataset(root, split="val")

    write_split(tmp_path / "bad.json", {"test": ["case_1", "case_77"]}, name="bad")
    with pytest.raises(SplitError, match="case_77"):
        FolderDataset(root, split="test", splits_file=tmp_path / "bad.json")
    nosplit = _make_folder(tmp_path / "n", ["case_1"])
    with pytest.raises(SplitError, match="splits.json"):
        FolderDataset(nosplit, split="train")


# --------------------------------------------------------------------------------------------
# captions


def _caption_csv(tmp_path, rows, header="image,caption,split"):
    lines = [header] + [",".join(f'"{c}"' for c in r) for r in rows]
    path = tmp_path / "captions.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_caption_dataset_drops_short_captions(tmp_path):
    for i in range(4):
        write_image(tmp_path / "img" / f"{i}.png", _image(i * 50))
    rows = [
        ("img/0.png", "Axial CT showing a large liver lesion, arterial phase", "train"),
        ("img/1.png", "short", "train"),
        ("img/2.png", "Chest radiograph with a right-sided effusion, PA view", "test"),
        ("img/3.png", "MRI brain, T2 weighted, ring-enhancing mass", "train"),
    ]
    path = _caption_csv(tmp_path, rows)
    ds = CaptionDataset(path, min_caption_chars=20)
    assert len(ds) == 3 and ds.dropped == 1
    image, caption = ds[1]
    assert image.shape == (12, 16, 3) and image.dtype == np.uint8 and int(image[0, 0, 0]) == 100
    assert caption.startswith("Chest radiograph")

    train = CaptionDataset(path, split="train", min_caption_chars=20)
    assert [p.name for p in train.image_paths] == ["0.png", "3.png"] and train.dropped == 1
    assert len(CaptionDataset(path)) == 4 and CaptionDataset(path).dropped == 0


def test_caption_dataset_transform_and_tokenizer(tmp_path):
    write_image(tmp_path / "pics" / "x.png", np.zeros((10, 20, 3), np.uint8))
    csv_dir = tmp_path / "meta"
    csv_dir.mkdir()
    path = _caption_csv(csv_dir, [("x.png", "a caption")], header="image,caption")
    ds = CaptionDataset(
        path,
        image_root=tmp_path / "pics",
        transform=lambda im: (im.mode, im.size),
        tokenizer=lambda texts: [[len(t) for t in texts][0], "unused"],
    )
    assert ds[0] == (("RGB", (20, 10)), 9)


def test_caption_dataset_errors(tmp_path):
    write_image(tmp_path / "a.png", _image(1))
    missing = _caption_csv(tmp_path, [("a.png", "ok caption", "train"), ("gone.png", "x", "train")])
    with pytest.raises(FileNotFoundError, match="gone.png"):
        CaptionDataset(missing)
    # rows dropped for short captions are not checked for files
    assert len(CaptionDataset(missing, min_caption_chars=5)) == 1

    no_header = _caption_csv(tmp_path, [("a.png", "ok caption")], header="a.png,first caption")
    with pytest.raises(ValueError, match=r"header.*'image' and 'caption'"):
        CaptionDataset(no_header)
    no_split = _caption_csv(tmp_path, [("a.png", "ok caption")], header="image,caption")
    with pytest.raises(ValueError, match="no 'split' column"):
        CaptionDataset(no_split, split="train")


# --------------------------------------------------------------------------------------------
# splits


def test_make_split_deterministic_order_independent_and_sized():
    stems = [f"s{i:03d}" for i in range(100)]
    a = make_split(stems, seed=7)
    shuffled = stems[:]
    random.Random(5).shuffle(shuffled)
    assert make_split(shuffled + stems[:10], seed=7) == a  # order and repeats do not matter
    assert {k: len(v) for k, v in a.items()} == {"train": 70, "val": 10, "test": 20}
    assert sorted(sum(a.values(), [])) == stems
    assert make_split(stems, seed=8) != a
    odd = make_split([f"s{i}" for i in range(7)], {"a": 0.5, "b": 0.25, "c": 0.25})
    counts = {k: len(v) for k, v in odd.items()}
    assert sum(counts.values()) == 7 and all(
        abs(counts[k] - f * 7) < 1 for k, f in {"a": 0.5, "b": 0.25, "c": 0.25}.items()
    )
    with pytest.raises(SplitError, match="sum to 1"):
        make_split(stems, {"train": 0.7, "test": 0.2})


def test_make_split_keeps_groups_together():
    stems = [f"p{p}_img{i}" for p in range(30) for i in range(p % 4 + 1)]
    groups = {s: s.split("_")[0] for s in stems}
    split = make_split(stems, seed=1, groups=groups)
    where = {}
    for name, members in split.items():
        for s in members:
            assert where.setdefault(groups[s], name) == name  # a patient is in one split only
    total = len(stems)
    for name, frac in {"train": 0.7, "val": 0.1, "test": 0.2}.items():
        assert abs(len(split[name]) - frac * total) <= 4  # within one (largest) group
    assert Counter(sum(split.values(), [])) == Counter(stems)
    # groups may also be a sequence aligned with the stems
    assert make_split(stems, seed=1, groups=[groups[s] for s in stems]) == split
    with pytest.raises(SplitError, match="align"):
        make_split(stems, groups=["p0"])
    with pytest.raises(SplitError, match="p0_img0"):
        make_split(stems, groups={k: v for k, v in groups.items() if k != "p0_img0"})


def test_split_files_round_trip_and_overlap(tmp_path, monkeypatch):
    splits = make_split([f"c{i}" for i in range(20)], seed=2)
    path = write_split(tmp_path / "mine.json", splits, name="mine", seed=2, rule="70/10/20 by stem")
    doc = json.loads(path.read_text())
    assert doc["name"] == "mine" and doc["seed"] == 2 and doc["rule"] == "70/10/20 by stem"
    assert load_split(path) == splits and load_split(str(path)) == splits

    with pytest.raises(SplitError, match=r"c1 \(train and test\)"):
        write_split(tmp_path / "bad.json", {"train": ["c1", "c2"], "test": ["c1"]}, name="bad")
    assert not (tmp_path / "bad.json").exists()
    (tmp_path / "hand.json").write_text(json.dumps({"splits": {"a": ["x", "y"], "b": ["y"]}}))
    with pytest.raises(SplitError, match="hand.json.*y"):
        load_split(tmp_path / "hand.json")

    # Bare names resolve to the package's split folder (pointed at tmp_path here).
    monkeypatch.setattr(ds_mod, "_SPLITS_DIR", tmp_path)
    assert load_split("mine") == splits
    with pytest.raises(SplitError, match="unknown split 'nope'; known: hand, mine"):
        load_split("nope")
