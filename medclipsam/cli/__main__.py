"""``python -m medclipsam.cli`` is the same as the ``medclipsam`` command."""

import sys

from . import main

sys.exit(main())
