"""The README's main job (``bash scripts/run main``): convert Fashion-MNIST, describe the store,
then run the benchmark's quick preset (``fastprune bench --quick``: the full benchmark's data,
recipe and 10 epochs with a half-width model, full data vs the two bandits at keep 0.5, one seed;
about 5 minutes on 2 cores), print its table, where its plots went, and a one-line verdict.
``--bench`` passes other options, e.g. ``bash scripts/run main --bench --keeps 0.3 0.5`` or
``--bench`` alone for the full benchmark. ``--device`` (auto: CUDA when available, else the CPU)
says where the benchmark trains: on a GPU machine the main job trains on the GPU. Each run
replaces the result file of the last (``--overwrite``) unless ``--continue`` is among the
``--bench`` arguments.

Stores are written under ``data/`` (kept between runs: a store is reconverted only when missing
or when it fails verification).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import cli
from .errors import ConfigError, StoreError

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
    parser = argparse.ArgumentParser(prog="python -m fastprune.main_job", description=__doc__)
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
    parser.add_argument("--device", default="auto", metavar="DEVICE",
                        help="where the benchmark trains: auto (CUDA when available, else the CPU), cpu, "
                             "cuda or cuda:N (a --device among the --bench arguments wins)")
    parser.add_argument("--bench", nargs=argparse.REMAINDER, default=["--quick"],
                        help="arguments for `fastprune bench` (default: --quick)")
    args = parser.parse_args(argv)
    from .train.device import resolve_device

    try:  # checked before converting anything: CUDA asked for and missing is one line
        resolve_device(args.device)
    except ConfigError as exc:
        parser.exit(1, f"{parser.prog}: error: {exc}\n")
    bench = args.bench if any(a == "--device" or a.startswith("--device=") for a in args.bench) else \
        ["--device", args.device, *args.bench]
    if not {"--continue", "--overwrite"} & set(bench):  # the main job measures afresh each time it runs
        bench.append("--overwrite")
    args.data_dir.mkdir(parents=True, exist_ok=True)
    train = ensure_store("train", args.data_dir / "fashion-mnist-train.beton")
    ensure_store("test", args.data_dir / "fashion-mnist-test.beton")
    code = cli.main(["info", str(train)])
    if code != 0:
        return code
    full_bench = "" if "--quick" not in bench else " (the full benchmark: bash scripts/run main --bench)"
    print(f"\ntraining full data vs pruning: fastprune bench {' '.join(bench)}{full_bench}", flush=True)
    return cli.main(["bench", "--workdir", str(args.data_dir), *bench])


if __name__ == "__main__":
    sys.exit(main())
