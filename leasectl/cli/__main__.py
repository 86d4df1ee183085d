"""``python -m leasectl.cli``: the same as the ``leasectl`` console script."""

import sys

from leasectl.cli import main

sys.exit(main())
