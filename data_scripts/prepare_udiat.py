#!/usr/bin/env python
"""Convert UDIAT Dataset B (breast ultrasound) into the medclipsam folder layout; see data_scripts/README.md.

Run `python data_scripts/prepare_udiat.py --help` for the options (the converter is
`medclipsam.data.sources.udiat`; `medclipsam prepare udiat ...` runs the same).
"""

from _converter import run

if __name__ == "__main__":
    raise SystemExit(run("udiat"))
