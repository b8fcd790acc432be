"""``python -m pulse_trio`` works like the ``pulse`` command."""

import sys

from ._cli import main

sys.exit(main())
