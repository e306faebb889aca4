"""``python -m toysim``."""

import sys

from ._cli import main

if __name__ == "__main__":  # not when a worker process of `toysim check --jobs` imports it
    sys.exit(main())
