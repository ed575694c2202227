"""Conversion speed: fastprune.write_dataset vs ffcv's DatasetWriter on the same Fashion-MNIST images.

Both writers read the same in-memory source (60k train images replicated to 28x28x3 RGB, int
label) and write to the same folder; runs are interleaved (fastprune, ffcv, fastprune, ...) and the
median of --reps repetitions is reported, after one untimed warm-up of each. Raw and JPEG storage.

    .venv/bin/python benchmarks/write_throughput.py [--reps 3] [--samples 60000] [--workers 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


import numpy as np

from fastprune.bench.machine import RESULTS, command_line, machine, now, write_json
from fastprune.convert.idx import FASHION_MNIST_DIR, find_idx_files, load_idx


class FashionMnistRGB:
    """(28x28x3 uint8 image, int label) per index, like a map-style dataset."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images = np.ascontiguousarray(np.repeat(images[:, :, :, None], 3, axis=3))
        self.labels = labels.astype(np.int64)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i])


def write_fastprune(path, source, mode, workers):
    from fastprune.store import IntField, RGBImageField, write_dataset
    write_dataset(path, source, {"image": RGBImageField(write_mode=mode, jpeg_quality=90), "label": IntField()},
                  workers=workers, progress=False)


def write_ffcv(path, source, mode, workers):
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter
    writer = DatasetWriter(str(path), {"image": RGBImageField(write_mode=mode, jpeg_quality=90),
                                       "label": IntField()}, num_workers=workers)
    writer.from_indexed_dataset(source)


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--samples", type=int, default=60000)
    parser.add_argument("--workers", type=int, default=2, help="processes for both writers")
    parser.add_argument("--out", type=Path, default=RESULTS / "write_throughput.json")
    args = parser.parse_args()

    images, labels = load_idx(*find_idx_files(FASHION_MNIST_DIR, "train"))
    images, labels = images[: args.samples], labels[: args.samples]
    source = FashionMnistRGB(images, labels)
    n = len(source)
    systems = {"fastprune": write_fastprune, "ffcv": write_ffcv}

    runs, ratios = [], {}
    with tempfile.TemporaryDirectory(prefix="write_throughput.", dir="/tmp") as tmp:
        for mode in ("raw", "jpg"):
            times = {name: [] for name in systems}
            sizes = {}
            for name, fn in systems.items():  # warm-up: imports, numba/ffcv compilation, page cache
                fn(Path(tmp) / f"warm_{name}.beton", FashionMnistRGB(images[:2000], labels[:2000]),
                   mode, args.workers)
            for rep in range(args.reps):
                for name, fn in systems.items():
                    path = Path(tmp) / f"{name}_{mode}.beton"
                    times[name].append(timed(fn, path, source, mode, args.workers))
                    sizes[name] = path.stat().st_size
                    path.unlink()
            for name in systems:
                per_s = [n / t for t in times[name]]
                runs.append({"system": name, "data": f"fmnist28_{mode}", "threads": args.workers,
                             "samples": n, "wall_s_all": [round(t, 3) for t in times[name]],
                             "wall_s_median": round(statistics.median(times[name]), 3),
                             "img_per_s_median": round(statistics.median(per_s)),
                             "img_per_s_all": [round(x) for x in per_s], "file_bytes": sizes[name]})
            ratios[f"fastprune_over_ffcv_{mode}"] = round(
                statistics.median(times["ffcv"]) / statistics.median(times["fastprune"]), 2)

    print(f"{'system':<10} {'data':<14} {'workers':>7} {'median s':>9} {'img/s':>9} {'file MiB':>9}")
    for r in runs:
        print(f"{r['system']:<10} {r['data']:<14} {r['threads']:>7} {r['wall_s_median']:>9.2f} "
              f"{r['img_per_s_median']:>9} {r['file_bytes'] / 2**20:>9.1f}")
    for key, value in ratios.items():
        print(f"{key}: {value}x (ffcv median time / fastprune median time)")
    result = {"benchmark": "write_throughput", "command": command_line(), "machine": machine(),
              "date": now(), "runs": runs, "ratios": ratios}
    print(f"wrote {write_json(args.out, result)}")


if __name__ == "__main__":
    main()
