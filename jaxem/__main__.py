"""``python -m jaxem``: the same as the ``jaxem`` command."""

import sys

from .cli import main

sys.exit(main())
