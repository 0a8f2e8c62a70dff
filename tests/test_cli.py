"""The command line as a user runs it: a real subprocess, real files."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest
from PIL import Image

from medclipsam.cli import build_parser


def _run(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "medclipsam", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_demo_writes_figure_and_table(tmp_path):
    proc = _run("demo", "--out", str(tmp_path / "demo"), "--n", "2", "--size", "128")
    assert proc.returncode == 0, proc.stderr
    fig = tmp_path / "demo" / "phantom_preview.png"
    assert Image.open(fig).size[0] > 300
    rows = list(csv.DictReader(open(tmp_path / "demo" / "summary.csv")))
    assert [r["task"] for r in rows] == ["breast", "brain", "xray"]
    assert all(int(r["images"]) == 2 for r in rows)
    assert "breast" in proc.stdout and "summary.csv" in proc.stdout


def test_phantom_command_writes_the_folder_layout(tmp_path):
    proc = _run("phantom", "--task", "xray", "--n", "3", "--size", "96", "--out", str(tmp_path / "x"))
    assert proc.returncode == 0, proc.stderr
    from medclipsam.data import FolderDataset

    ds = FolderDataset(tmp_path / "x")
    assert len(ds) == 3 and ds[0]["mask"].any()


@pytest.mark.parametrize("command", ["demo", "phantom", "prepare", "finetune", "info"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([command, "--help"])
    assert exc.value.code == 0
    assert "usage: medclipsam" in capsys.readouterr().out


def test_prepare_forwards_to_the_converter(tmp_path):
    proc = _run("prepare", "busi", "--help")
    assert proc.returncode == 0 and "BUSI" in proc.stdout
    missing = _run("prepare", "busi", str(tmp_path / "nope.zip"), str(tmp_path / "out"))
    assert missing.returncode != 0
    assert "nope.zip" in (missing.stdout + missing.stderr)


def test_info_runs():
    proc = _run("info")
    assert proc.returncode == 0 and "torch" in proc.stdout and "MEDCLIPSAM_CACHE" in proc.stdout
