"""``python -m pulse_trio`` works like the ``pulse`` command."""

import sys

from .cli import main

sys.exit(main())
