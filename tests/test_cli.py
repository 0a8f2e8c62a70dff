"""The command line as a user runs it: a real subprocess, real files."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest
from PIL import Image

from medclipsam.cli import build_parser

# Each run loads torch and the toy models; a loaded 2-core machine needs minutes for what takes
# seconds on an idle one. The limit only catches a hang.
TIMEOUT = 1800


def _run(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "medclipsam", *args], cwd=cwd, capture_output=True, text=True,
        timeout=TIMEOUT,
    )


@pytest.mark.heavy
def test_demo_segments_the_three_tasks_and_writes_figures_and_tables(tmp_path):
    proc = _run("demo", "--out", str(tmp_path / "demo"), "--n", "2", "--size", "160")
    assert proc.returncode == 0, proc.stderr
    for task in ("breast", "brain", "xray"):
        assert Image.open(tmp_path / "demo" / f"{task}_results.png").size[0] > 600
    rows = list(csv.DictReader(open(tmp_path / "demo" / "summary.csv")))
    assert [r["task"] for r in rows] == ["breast", "brain", "xray"]
    assert all(int(r["images"]) == 2 for r in rows)
    assert all(0 <= float(r["dice"]) <= 1 and 0 <= float(r["dice_random_map"]) <= 1 for r in rows)
    per_image = list(csv.DictReader(open(tmp_path / "demo" / "per_image.csv")))
    assert len(per_image) == 6 and {"dice", "iou", "hd95", "nsd"} <= set(per_image[0])
    assert "dice" in proc.stdout and "summary.csv" in proc.stdout


def test_segment_then_evaluate_a_folder(tmp_path):
    data = tmp_path / "phantom"
    assert _run("phantom", "--task", "brain", "--n", "3", "--size", "128", "--out", str(data)).returncode == 0
    out = tmp_path / "seg"
    proc = _run("segment", "--images", str(data / "images"), "--prompt", "brain tumor", "--out", str(out),
                "--saliency", "gradcam", "--quiet")
    assert proc.returncode == 0, proc.stderr
    masks = sorted(p.name for p in (out / "masks").iterdir())
    assert len(masks) == 3 and "3 images segmented" in proc.stdout
    table = tmp_path / "scores.csv"
    proc = _run("evaluate", "--pred", str(out / "masks"), "--gt", str(data / "masks"), "--csv", str(table))
    assert proc.returncode == 0, proc.stderr
    assert "3 images" in proc.stdout and "dice" in proc.stdout and "nsd" in proc.stdout
    # The printed mean is the mean of the per-image table.
    rows = list(csv.DictReader(open(table)))
    mean = sum(float(r["dice"]) for r in rows) / len(rows)
    assert f"dice  {mean:.4f}" in proc.stdout
    (out / "masks" / masks[0]).unlink()
    proc = _run("evaluate", "--pred", str(out / "masks"), "--gt", str(data / "masks"))
    assert proc.returncode != 0 and "without a prediction" in proc.stderr


def test_phantom_command_writes_the_folder_layout(tmp_path):
    proc = _run("phantom", "--task", "xray", "--n", "3", "--size", "96", "--out", str(tmp_path / "x"))
    assert proc.returncode == 0, proc.stderr
    from medclipsam.data import FolderDataset

    ds = FolderDataset(tmp_path / "x")
    assert len(ds) == 3 and ds[0]["mask"].any()


@pytest.mark.parametrize("command", ["demo", "segment", "evaluate", "pseudo-label", "train-weak", "reproduce", "phantom", "prepare", "finetune", "info"])
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


@pytest.mark.heavy
def test_pseudo_label_train_weak_and_reproduce_commands(tmp_path):
    """pseudo-label, train-weak and reproduce as a user chains them: the train split's
    pseudo-labels written first into reproduce's own folder are resumed, not redone."""
    import json

    data = tmp_path / "phantom"
    assert _run("phantom", "--task", "breast", "--n", "10", "--size", "64", "--out", str(data)).returncode == 0
    train = json.loads((data / "splits.json").read_text())["splits"]["train"]
    rep = tmp_path / "rep"
    pl = rep / "pseudo"
    proc = _run("pseudo-label", "--images", str(data / "images"), "--prompt", "breast tumor", "--out", str(pl),
                "--task", "breast", "--split", "train", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.stem for p in (pl / "masks").iterdir()) == sorted(train)
    assert (pl / "results.csv").is_file()
    written = {p.name: p.stat().st_mtime_ns for p in (pl / "masks").iterdir()}
    proc = _run("train-weak", "--images", str(data / "images"), "--masks", str(data / "masks"),
                "--out", str(tmp_path / "net"), "--epochs", "2", "--size", "32", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "best epoch" in proc.stdout and (tmp_path / "net" / "model.pt").is_file()
    bare = tmp_path / "bare"
    (bare / "images").mkdir(parents=True)
    proc = _run("train-weak", "--images", str(bare / "images"), "--masks", str(data / "masks"),
                "--out", str(tmp_path / "net2"), "--quiet")
    assert proc.returncode == 2 and "--val-images" in proc.stderr
    proc = _run("reproduce", "--task", "breast", "--data", str(data), "--out", str(rep),
                "--epochs", "2", "--size", "32", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "weakly supervised" in proc.stdout and "fully supervised" in proc.stdout
    # the train split's pseudo-labels were resumed (the same files), the val split's added
    assert written == {
        p.name: p.stat().st_mtime_ns for p in (pl / "masks").iterdir() if p.name in written
    }
    assert len(list((pl / "masks").iterdir())) > len(written)


def test_help_never_imports_torch():
    """``medclipsam --help`` and every ``medclipsam SUB --help`` answer without torch or scipy
    being imported, and every converter's help without torch or the models: the options come
    from torch-free modules."""
    code = (
        "import sys\n"
        "from medclipsam.cli import build_parser\n"
        "parser = build_parser()\n"
        "commands = [a for a in parser._actions if a.__class__.__name__ == '_SubParsersAction'][0].choices\n"
        "for argv in [['--help'], *[[c, '--help'] for c in commands]]:\n"
        "    try:\n"
        "        build_parser().parse_args(argv)\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, argv\n"
        "light = sorted(m for m in ('torch', 'scipy') if m in sys.modules)\n"
        "from medclipsam.cli import main\n"
        "for source in ('busi', 'udiat', 'brain_figshare', 'covidqu', 'roco'):\n"
        "    try:\n"
        "        main(['prepare', source, '--help'])\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, source\n"
        "heavy = sorted(m for m in ('torch', 'open_clip', 'segment_anything', 'monai') if m in sys.modules)\n"
        "print(len(commands), light + heavy)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    n, heavy = proc.stdout.splitlines()[-1].split(" ", 1)
    assert heavy == "[]" and int(n) >= 10, proc.stdout[-500:]


def _subparsers():
    import argparse

    parser = build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_every_option_says_its_default():
    for name, sub in _subparsers().items():
        for action in sub._actions:
            if not action.option_strings or action.required or "--help" in action.option_strings:
                continue
            assert action.help and "default" in action.help, f"medclipsam {name} {action.option_strings[0]}"


def test_cli_defaults_are_the_python_apis():
    import inspect

    from medclipsam.cli.options import pipeline_overrides
    from medclipsam.config import FinetuneConfig, WeakConfig
    from medclipsam.demo import run_demo

    parse = build_parser().parse_args
    seg = parse(["segment", "--images", "i", "--prompt", "p", "--out", "o"])
    assert pipeline_overrides(seg) == {}  # nothing set: MedCLIPSAM's own defaults (postprocess crf)
    assert "crf" in _subparsers()["segment"]._option_string_actions["--postprocess"].help
    ft = vars(parse(["finetune", "--captions", "c.csv", "--out", "o"]))
    for field, value in vars(FinetuneConfig()).items():
        if field in ft:
            assert ft[field] == value, field
    weak = WeakConfig()
    for command in ("train-weak", "reproduce"):
        args = vars(parse([command, "--images", "i", "--masks", "m", "--out", "o"] if command == "train-weak"
                          else [command, "--task", "breast", "--data", "d", "--out", "o"]))
        for field in ("epochs", "batch_size", "size", "lr", "patience", "min_epochs", "seed", "device"):
            if field in args:
                assert args[field] == getattr(weak, field), (command, field)
    demo = vars(parse(["demo"]))
    for field, param in inspect.signature(run_demo).parameters.items():
        if field in demo and field != "out":
            assert demo[field] == param.default, field


def test_threads_option_sets_torchs_threads(tmp_path):
    import torch

    from medclipsam.cli import main

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # so that the option's effect shows whatever the suite runs with
        # the missing folder is refused (exit code 2) after the threads are set, before models load
        assert main(["segment", "--images", str(tmp_path / "none"), "--prompt", "p",
                     "--out", str(tmp_path / "o"), "--threads", "1", "--quiet"]) == 2
        assert torch.get_num_threads() == 1
        assert main(["segment", "--images", str(tmp_path), "--prompt", "p", "--out",
                     str(tmp_path / "o"), "--threads", "0"]) == 2  # at least one thread
    finally:
        torch.set_num_threads(before)


def _option_defs(sub, group_title):
    group = next(g for g in sub._action_groups if g.title == group_title)
    return [(a.option_strings, a.dest, a.default, a.type, a.choices, a.help) for a in group._group_actions]


def test_shared_option_groups_are_one_definition():
    """Every command with pipeline settings or models takes them from one group definition
    (medclipsam.cli.options): the same options, and the same parsed namespace gives the same
    PipelineConfig overrides and the same WeakConfig fields, in-process (no subprocess)."""
    from medclipsam.cli.options import config_from, pipeline_overrides
    from medclipsam.config import PipelineConfig, WeakConfig

    subs = _subparsers()
    titled = {title: [n for n, s in subs.items() if any(g.title == title for g in s._action_groups)]
              for title in ("pipeline settings", "models")}
    assert {"segment", "pseudo-label"} <= set(titled["pipeline settings"])
    assert {"segment", "pseudo-label", "reproduce"} <= set(titled["models"])
    required = {"segment": ["--images", "i", "--prompt", "p", "--out", "o"],
                "pseudo-label": ["--images", "i", "--prompt", "p", "--out", "o"],
                "reproduce": ["--task", "breast", "--data", "d", "--out", "o"]}
    parse = build_parser().parse_args
    for name in titled["models"]:
        assert _option_defs(subs[name], "models") == _option_defs(subs["segment"], "models"), name
        args = parse([name, *required[name], "--clip", "biomedclip", "--sam", "vit_b", "--device", "cpu"])
        assert (args.clip, args.sam, args.sam_checkpoint, args.device) == ("biomedclip", "vit_b", None, "cpu")
    saliency = {"--saliency", "--k", "--precision", "--postprocess"}
    for name in titled["pipeline settings"]:
        defs = {d[0][0]: d for d in _option_defs(subs[name], "pipeline settings")}
        reference = {d[0][0]: d for d in _option_defs(subs["segment"], "pipeline settings")}
        assert saliency <= set(defs) and all(defs[o] == reference[o] for o in defs), name
        args = parse([name, *required[name], "--k", "12", "--postprocess", "otsu"])
        over = pipeline_overrides(args)
        assert over == {"k": 12, "postprocess": "otsu"}, name
        cfg = PipelineConfig(**over)
        assert (cfg.k, cfg.postprocess, cfg.saliency_kwargs) == (12, "otsu", {}), name
        assert pipeline_overrides(parse([name, *required[name]])) == {}, name
        with pytest.raises(ValueError, match="--k: not an option of --saliency gradcam"):
            pipeline_overrides(parse([name, *required[name], "--saliency", "gradcam", "--k", "8"]))
    # the UNet's options: one definition in train-weak and reproduce, WeakConfig's fields
    for argv in (["train-weak", "--images", "i", "--masks", "m", "--out", "o"], ["reproduce", *required["reproduce"]]):
        cfg = config_from(WeakConfig, parse([*argv, "--epochs", "3", "--batch-size", "2", "--size", "48"]))
        assert (cfg.epochs, cfg.batch_size, cfg.size) == (3, 2, 48), argv[0]
