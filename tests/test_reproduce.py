"""Stage 4 end to end on a tiny phantom data set: pseudo-labels, weak/full training, the table."""

from __future__ import annotations

import csv
import json

import pytest

from medclipsam.config import WeakConfig
from medclipsam.data.phantom import write_phantom_folder
from medclipsam.reproduce import pseudo_label, reproduce


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_phantom_folder(tmp_path_factory.mktemp("phantom") / "brain", "brain", 20, size=96)


TINY = dict(epochs=3, size=64, batch_size=4, channels=(8, 16, 32), strides=(2, 2), patience=None)


def test_pseudo_labels_of_one_split_resume_and_keep_a_manifest(standin_pipe, data, tmp_path):
    from medclipsam.data.datasets import load_split

    train = load_split(data / "splits.json")["train"]
    calls = standin_pipe.session.encoder_calls
    first = pseudo_label(standin_pipe, data / "images", tmp_path / "pl", "brain tumor", task="brain", stems=train[:3],
                         progress=False)
    rows = pseudo_label(standin_pipe, data / "images", tmp_path / "pl", "brain tumor", task="brain", stems=train,
                        progress=False)
    assert len(first) == 3 and [r["id"] for r in rows] == sorted(train)
    assert standin_pipe.session.encoder_calls == calls + len(train)  # the first three were not redone
    assert sorted(p.stem for p in (tmp_path / "pl" / "masks").iterdir()) == sorted(train)
    with open(tmp_path / "pl" / "results.csv", newline="") as fh:
        manifest = list(csv.DictReader(fh))
    assert {"id", "prompt", "sam_score", "flags"} <= set(manifest[0]) and len(manifest) == len(train)
    assert json.loads((tmp_path / "pl" / "run.json").read_text())["prompt"] == "brain tumor"


def test_reproduce_writes_the_three_way_table_and_resumes(standin_pipe, data, tmp_path):
    cfg = WeakConfig(**TINY, progress=False)
    table = reproduce(data, tmp_path / "run", task="brain", pipe=standin_pipe, config=cfg, drop_uncertain=0.25,
                      n_boot=50, progress=False)
    settings = [r["setting"] for r in table]
    assert settings == ["zero-shot", "weakly supervised", "weak, 25% most uncertain dropped", "fully supervised"]
    for r in table:
        assert 0.0 <= r["dice"] <= 1.0 and r["test_images"] == 4
    assert table[1]["paper_v2_dsc_nsd"] == "80.03 / 88.25"
    out = tmp_path / "run"
    assert (out / "table.md").read_text().startswith("# brain")
    unc = list(csv.DictReader(open(out / "uncertainty.csv")))
    assert len(unc) == 14 and sum(int(r["kept"]) for r in unc) == 11  # floor(0.25 * 14) = 3 dropped
    # The weak runs learned from (and were selected on) the pseudo-label folder, the full run on
    # the real masks.
    for run in ("weak", "weak_filtered"):
        src = json.loads((out / run / "log.json").read_text())["data"]
        assert src["train_masks"] == src["val_masks"] == str(out / "pseudo" / "masks")
    assert json.loads((out / "full" / "log.json").read_text())["data"]["train_masks"] == str(data / "masks")
    # A second call reads everything back: same table, no training.
    mtime = (out / "weak" / "model.pt").stat().st_mtime_ns
    again = reproduce(data, out, task="brain", pipe=standin_pipe, config=cfg, drop_uncertain=0.25, n_boot=50,
                      progress=False)
    assert [r["dice"] for r in again] == [r["dice"] for r in table]
    assert (out / "weak" / "model.pt").stat().st_mtime_ns == mtime
