"""End-to-end benchmark (same program as ``fastprune bench``): see fastprune/bench/end_to_end.py."""

import sys

from fastprune.bench.end_to_end import main

if __name__ == "__main__":
    sys.exit(main())
