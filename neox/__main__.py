"""``python -m neox`` runs the ``neox`` command line (see neox/cli.py)."""

import sys

from .cli import main

sys.exit(main())
