"""Data layer: the one image-conversion rule, image/mask I/O, folder and caption data sets, split files, the phantom world.

Submodules are imported lazily so that ``import medclipsam.data`` stays cheap.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "io": [
        "SUPPORTED_SUFFIXES",
        "ImageReadError",
        "SizeMismatchError",
        "file_stem",
        "load_array",
        "load_picture",
        "read_image",
        "read_mask",
        "write_image",
        "write_mask",
    ],
    "convert": ["apply_window", "as_array", "to_uint8", "to_unit_float"],
    "datasets": [
        "CaptionDataset",
        "FolderDataset",
        "PairingError",
        "SplitError",
        "known_splits",
        "load_split",
        "make_split",
        "pair_by_stem",
        "write_split",
    ],
    "phantom": [
        "CLASSES",
        "ALT_PROMPTS",
        "INTENSITY_RULE",
        "PROMPTS",
        "TASKS",
        "PhantomDataset",
        "PhantomPairs",
        "PhantomSample",
        "generate_sample",
        "intensity_rule_point",
        "pointing_hit",
        "write_phantom_folder",
    ],
}
_WHERE = {name: mod for mod, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        module = importlib.import_module(f".{_WHERE[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
