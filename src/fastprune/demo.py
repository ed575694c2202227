"""The README's main job (``bash scripts/run main``): convert Fashion-MNIST, then compare training
on full data with dynamic pruning and print the speed-up table.

Stores are written under ``data/`` (kept between runs: a store is reconverted only when missing
or when it fails verification).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import cli
from .errors import StoreError

DATA_DIR = Path("data")


def ensure_store(split: str, out: Path) -> Path:
    """Convert the Fashion-MNIST ``split`` to ``out`` unless a store that verifies is already there."""
    if out.exists():
        from .store.reader import Store

        try:
            with Store(out) as store:
                store.verify().raise_if_bad()
            print(f"{out}: present and verified, not reconverted")
            return out
        except StoreError as exc:
            print(f"{out}: {exc}; reconverting")
    code = cli.main(["convert", "fashion-mnist", "--split", split, "--out", str(out)])
    if code != 0:
        raise SystemExit(code)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastprune.demo", description=__doc__)
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
    args = parser.parse_args(argv)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    train = ensure_store("train", args.data_dir / "fashion-mnist-train.beton")
    ensure_store("test", args.data_dir / "fashion-mnist-test.beton")
    return cli.main(["info", str(train)])


if __name__ == "__main__":
    sys.exit(main())
