"""``python -m jaxem``: the same as the ``jaxem`` command."""

import sys

from .app.cli import main

if __name__ == "__main__":
    sys.exit(main())
