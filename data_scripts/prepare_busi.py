#!/usr/bin/env python
"""Convert BUSI (breast ultrasound) into the medclipsam folder layout; see data_scripts/README.md.

Run `python data_scripts/prepare_busi.py --help` for the options (the converter is
`medclipsam.data.sources.busi`; `medclipsam prepare busi ...` runs the same).
"""

from _converter import run

if __name__ == "__main__":
    raise SystemExit(run("busi"))
