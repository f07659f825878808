"""``python -m jaxem``: the same as the ``jaxem`` command."""

import sys

from .app.cli import main

sys.exit(main())
