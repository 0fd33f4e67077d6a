"""``python -m ember.cli launch ...``: the ``ember`` command without the console script."""

import sys

from ember.cli import main

sys.exit(main())
