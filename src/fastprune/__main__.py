"""``python -m fastprune`` runs the command line (see fastprune.cli)."""

import sys

from .cli import main

sys.exit(main())
