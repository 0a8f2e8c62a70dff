#!/usr/bin/env python
"""Convert COVID-QU-Ex (chest X-ray lungs) into the medclipsam folder layout; see data_scripts/README.md.

Run `python data_scripts/prepare_covidqu.py --help` for the options (the converter is
`medclipsam.data.sources.covidqu`; `medclipsam prepare covidqu ...` runs the same).
"""

from _converter import run

if __name__ == "__main__":
    raise SystemExit(run("covidqu"))
