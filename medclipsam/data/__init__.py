"""Data layer: the one image-conversion rule, image/mask I/O, folder and caption data sets, split
files, the phantom world.

Importing this package imports NumPy, Pillow and SciPy (no torch); the top-level
``import medclipsam`` does not import it.
"""

from __future__ import annotations

from .convert import apply_window, as_array, to_uint8, to_unit_float
from .datasets import (
    CaptionDataset,
    FolderDataset,
    PairingError,
    SplitError,
    known_splits,
    load_split,
    make_split,
    pair_by_stem,
    write_split,
)
from .io import (
    SUPPORTED_SUFFIXES,
    ImageReadError,
    SizeMismatchError,
    file_stem,
    load_array,
    load_picture,
    read_image,
    read_mask,
    write_image,
    write_mask,
)
from .phantom import (
    ALT_PROMPTS,
    CLASSES,
    INTENSITY_RULE,
    PROMPTS,
    TASKS,
    PhantomDataset,
    PhantomPairs,
    PhantomSample,
    generate_sample,
    intensity_rule_point,
    pointing_hit,
    pointing_verdict,
    write_phantom_folder,
)

__all__ = [
    "ALT_PROMPTS",
    "CLASSES",
    "INTENSITY_RULE",
    "PROMPTS",
    "SUPPORTED_SUFFIXES",
    "SizeMismatchError",
    "TASKS",
    "CaptionDataset",
    "FolderDataset",
    "ImageReadError",
    "PairingError",
    "PhantomDataset",
    "PhantomPairs",
    "PhantomSample",
    "SplitError",
    "apply_window",
    "as_array",
    "file_stem",
    "generate_sample",
    "intensity_rule_point",
    "known_splits",
    "load_array",
    "load_picture",
    "load_split",
    "make_split",
    "pair_by_stem",
    "pointing_hit",
    "pointing_verdict",
    "read_image",
    "read_mask",
    "to_uint8",
    "to_unit_float",
    "write_image",
    "write_mask",
    "write_phantom_folder",
    "write_split",
]
