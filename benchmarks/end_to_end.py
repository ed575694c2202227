"""End-to-end benchmark (same program as ``fastprune bench``): see fastprune/bench/cli.py."""

import sys

from fastprune.bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
