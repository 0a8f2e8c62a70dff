"""Converters from public data sets to the project's folder layout.

One module per source, each with ``prepare(source, out_dir, ...) -> Path`` and a command line
``main(argv)`` (the thin scripts in ``data_scripts/`` call it):

* :mod:`.busi`: BUSI breast ultrasound (780 images, benign/malignant/normal)
* :mod:`.udiat`: UDIAT Dataset B breast ultrasound (163 images; given on request)
* :mod:`.brain_figshare`: figshare brain tumour MRI (3064 slices, 233 patients, 16-bit)
* :mod:`.covidqu`: COVID-QU-Ex chest X-rays with lung masks (33,920 images; Kaggle)
* :mod:`.roco`: ROCO image-caption pairs for CLIP fine-tuning

Output: ``OUT/images/<stem>.png``, ``OUT/masks/<stem>.png`` (0/255), ``OUT/meta.csv``,
``OUT/splits.json`` and finally ``OUT/DONE`` (ROCO: ``OUT/captions.csv`` instead of masks and
meta). Modules are imported on first use so that ``import medclipsam.data.sources`` is cheap.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ...vocab import DATA_SOURCES
from ._common import SourceFormatError

__all__ = ["DATA_SOURCES", "SourceFormatError", "get_source"]


def get_source(name: str) -> ModuleType:
    """The converter module of a source (``"busi"``, ``"brain_figshare"``, ...)."""
    key = name.lower().replace("-", "_")
    if key not in DATA_SOURCES:
        raise ValueError(f"unknown data source {name!r}; known: {', '.join(DATA_SOURCES)}")
    return importlib.import_module(f".{key}", __name__)
