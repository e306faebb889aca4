"""``python -m toysim``."""

from ._cli import console

if __name__ == "__main__":  # not when a worker process of `toysim check --jobs` imports it
    console()
