"""``python -m lmcore``: see lmcore.cli for the commands."""

import sys

from lmcore.cli import main

if __name__ == "__main__":
    sys.exit(main())
