"""A test stand-in for SAM: segment_anything's own architecture, shrunk and trained on phantoms.

Not part of the package: no user-facing path can reach it. The offline world's SAM is the real
LiteMedSAM (``load_sam("litemedsam")``); this stand-in only lets fast tests of SAM-independent
logic (folder runs, resume, bad input, the prompt plumbing) run without LiteMedSAM's encoder.
It is *not* box-faithful (it finds a phantom lesion from a box over a third of it), so every test
of what SAM does with a box uses LiteMedSAM. The weights (``tests/data/toy_sam.pt``, a
``medclipsam-sam/1`` checkpoint with its ``sam_config``) were trained by the package's former
``medclipsam/models/toy_sam.py`` (in the repository's history) on phantom images of all tasks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from segment_anything import SamPredictor

from medclipsam.models.sam import load_sam

TOY_SAM_PATH = Path(__file__).resolve().parent / "data" / "toy_sam.pt"


def load_toy_sam(device: Any = "cpu", path: str | Path = TOY_SAM_PATH) -> SamPredictor:
    """The stand-in as a plain ``SamPredictor`` (segment_anything's preprocessing)."""
    return load_sam(Path(path), device=device, kind="sam")


def standin_pipeline(**overrides: Any) -> Any:
    """The offline pipeline's settings with the stand-in instead of LiteMedSAM: for tests whose
    subject is not what SAM draws."""
    from medclipsam.config import OFFLINE_DEFAULTS
    from medclipsam.models import load_clip
    from medclipsam.pipeline import MedCLIPSAM

    for key, value in OFFLINE_DEFAULTS.items():
        overrides.setdefault(key, value)
    return MedCLIPSAM(load_clip("toy"), load_toy_sam(), world="offline", **overrides)
