"""``python -m toysim``."""

from ._cli import console

if __name__ == "__main__":
    console()
