#!/usr/bin/env python
"""Convert ROCO (image-caption pairs) into the medclipsam folder layout; see data_scripts/README.md.

Run `python data_scripts/prepare_roco.py --help` for the options (the converter is
`medclipsam.data.sources.roco`; `medclipsam prepare roco ...` runs the same).
"""

from _converter import run

if __name__ == "__main__":
    raise SystemExit(run("roco"))
