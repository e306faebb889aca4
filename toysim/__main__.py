"""``python -m toysim``."""

import sys

from ._cli import main

sys.exit(main())
