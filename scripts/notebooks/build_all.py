"""Rebuild every notebook in notebooks/ from its source script beside this file."""

import runpy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
for src in sorted(HERE.glob("nb[0-9]*.py")):
    runpy.run_path(str(src), run_name="__main__")
