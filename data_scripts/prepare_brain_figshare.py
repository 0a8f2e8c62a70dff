#!/usr/bin/env python
"""Convert the figshare brain-tumour MRI set into the medclipsam folder layout; see data_scripts/README.md.

Run `python data_scripts/prepare_brain_figshare.py --help` for the options (the converter is
`medclipsam.data.sources.brain_figshare`; `medclipsam prepare brain_figshare ...` runs the same).
"""

from _converter import run

if __name__ == "__main__":
    raise SystemExit(run("brain_figshare"))
