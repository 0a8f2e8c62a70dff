#!/usr/bin/env python
"""Convert the brain_figshare data set into the medclipsam folder layout; see data_scripts/README.md.

Run `python data_scripts/prepare_brain_figshare.py --help` for the options.
"""

import sys
from pathlib import Path

try:
    from medclipsam.data.sources.brain_figshare import main
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from medclipsam.data.sources.brain_figshare import main

if __name__ == "__main__":
    raise SystemExit(main())
