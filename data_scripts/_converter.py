"""What every ``prepare_*.py`` here runs: the package's converter of one data set
(``medclipsam.data.sources.<name>.main``), also from a checkout that is not installed."""

import sys
from pathlib import Path


def run(name: str) -> int:
    """Run the converter of data set ``name`` with this script's command-line arguments."""
    try:
        from medclipsam.data.sources import get_source
    except ImportError:  # run from a checkout without `pip install -e .`
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from medclipsam.data.sources import get_source
    return int(get_source(name).main(sys.argv[1:]) or 0)
