"""``python -m pyflowcore``: the command line of ``pyflowcore.cli``."""

import sys

from pyflowcore.cli import main

if __name__ == "__main__":
    sys.exit(main())
