"""``python -m medclipsam`` is the same as the ``medclipsam`` command."""

import sys

from .cli import main

sys.exit(main())
