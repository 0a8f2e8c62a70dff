"""Every closed list of names lives in medclipsam.vocab; the modules and the CLI agree with it."""

from __future__ import annotations

import argparse
import importlib

import pytest

from medclipsam import vocab
from medclipsam.cli import build_parser


def _choices(parser: argparse.ArgumentParser, command: str, option: str):
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    action = next(a for a in sub.choices[command]._actions if option in a.option_strings or a.dest == option)
    return tuple(action.choices)


def test_modules_use_the_vocabulary():
    from medclipsam.config import TASK_PRESETS
    from medclipsam.data import sources
    from medclipsam.data.phantom import CLASSES, PROMPTS, TASKS
    from medclipsam.losses import LOSSES
    from medclipsam.saliency import METHODS
    from medclipsam.widgets import LABELS

    assert TASKS is vocab.TASKS and set(PROMPTS) == set(CLASSES) == set(TASK_PRESETS) == set(TASKS)
    assert set(METHODS) == set(vocab.SALIENCY_METHODS)
    assert set(LOSSES) == set(vocab.LOSS_NAMES)
    for name in vocab.DATA_SOURCES:
        assert sources.get_source(name) is importlib.import_module(f"medclipsam.data.sources.{name}")
    words = (*vocab.SALIENCY_METHODS, *vocab.CONTROL_SALIENCY, *vocab.POSTPROCESS_METHODS,
             *vocab.SAM_PROMPT_MODES)
    assert set(words) <= set(LABELS)


@pytest.mark.parametrize(
    ("command", "option", "words"),
    [
        ("segment", "--task", vocab.TASKS),
        ("segment", "--saliency", vocab.SALIENCY_METHODS),
        ("segment", "--postprocess", vocab.POSTPROCESS_METHODS),
        ("segment", "--box-mode", vocab.BOX_MODES),
        ("segment", "--precision", vocab.SALIENCY_PRECISIONS),
        ("demo", "--saliency", vocab.SALIENCY_METHODS),
        ("phantom", "--task", (*vocab.TASKS, "all")),
        ("prepare", "dataset", vocab.DATA_SOURCES),
        ("pseudo-label", "--task", vocab.TASKS),
        ("reproduce", "--task", vocab.TASKS),
        ("finetune", "--freeze", vocab.FREEZE_MODES),
        ("finetune", "--precision", vocab.TRAINING_PRECISIONS),
    ],
)
def test_cli_choices_are_the_vocabulary(command, option, words):
    assert _choices(build_parser(), command, option) == tuple(words)
