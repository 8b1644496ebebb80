"""``python -m avalanche_mm`` (and ``torchrun -m avalanche_mm``) runs the ``avalanche-mm`` command."""

import sys

from avalanche_mm.cli import main

if __name__ == "__main__":
    sys.exit(main())
