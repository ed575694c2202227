"""RandomHorizontalFlip fused into the native gather against the separate numba pass it replaces.

Same build, same batches (the unfused side uses a subclass of RandomHorizontalFlip, which the
loader does not fuse; tests/test_loader.py checks both give the same bytes), epochs interleaved
(fused, pass, fused, pass, ...). Rows: JPEG photos (long side 256 and 512, cut from the sample
photos that ship inside pip packages) with RandomResizedCrop 224/160 + flip into uint8 batches
(the host's half of the CUDA path) and + Normalize (the CPU path), and Fashion-MNIST raw 28 px
with flip only.

    .venv/bin/python benchmarks/fused_flip.py [--threads 1] [--epochs 3] [--photos 2000] [--tiny]

Prints a table; writes benchmarks/results/fused_flip.json (see shared BENCHMARKS.md) and a
markdown next to it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling script's photo helpers
from loader_throughput import photo_store  # noqa: E402

from fastprune.bench.machine import command_line, machine, now, provenance, write_json, write_markdown  # noqa: E402
from fastprune.convert import from_idx  # noqa: E402
from fastprune.loader import Loader, Normalize, RandomHorizontalFlip, RandomResizedCrop  # noqa: E402

NORMALIZE = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


class UnfusedFlip(RandomHorizontalFlip):
    """Not fused (the loader fuses RandomHorizontalFlip itself only): the numba pass."""


def cases(photos: dict[int, Path], fmnist: Path) -> dict:
    """name -> (store, pipeline builder taking the flip class, batch size)."""
    table = {}
    for side, store in photos.items():
        table[f"photos{side} RRC224 uint8"] = (store, lambda f: [RandomResizedCrop(224), f()], 128)
    first = photos[min(photos)]
    table["photos256 RRC160 uint8"] = (first, lambda f: [RandomResizedCrop(160), f()], 128)
    table["photos256 RRC224 + Normalize"] = (first, lambda f: [RandomResizedCrop(224), f(), Normalize(*NORMALIZE)], 128)
    table["raw28 flip uint8"] = (fmnist, lambda f: [f()], 256)
    table["raw28 flip + Normalize"] = (fmnist, lambda f: [f(), Normalize((0.286,) * 3, (0.353,) * 3)], 256)
    return table


def epoch_rate(loader: Loader) -> float:
    start, count = time.perf_counter(), 0
    for batch in loader:
        count += batch.images.shape[0]
    return count / (time.perf_counter() - start)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per side (after one warm-up)")
    parser.add_argument("--photos", type=int, default=2000)
    parser.add_argument("--tiny", action="store_true", help="a seconds-long run (the test suite's)")
    parser.add_argument("--workdir", type=Path, default=None, help="where the stores are written")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/fused_flip.json"))
    args = parser.parse_args(argv)
    if args.tiny:
        args.photos, args.epochs = 48, 1
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        photos = {side: photo_store(workdir, args.photos, side) for side in (256, 512)}
        fmnist = workdir / "fmnist-train.beton"
        if not fmnist.exists():
            from_idx(None, fmnist, progress=False)
        rows = []
        for name, (store, pipeline, batch) in cases(photos, fmnist).items():
            loaders = {kind: Loader(store, batch, threads=args.threads, seed=0, transforms=pipeline(flip))
                       for kind, flip in (("fused", RandomHorizontalFlip), ("numba pass", UnfusedFlip))}
            rates = {kind: [] for kind in loaders}
            for epoch in range(args.epochs + 1):
                for kind, loader in loaders.items():
                    loader.set_epoch(epoch)
                    rate = epoch_rate(loader)
                    if epoch:  # epoch 0 warms up: numba compilation, page cache
                        rates[kind].append(rate)
            fused, separate = statistics.median(rates["fused"]), statistics.median(rates["numba pass"])
            rows.append({"case": name, "fused_img_per_s": round(fused), "numba_pass_img_per_s": round(separate),
                         "ratio": round(fused / separate, 3), "fused_all": [round(r) for r in rates["fused"]],
                         "numba_pass_all": [round(r) for r in rates["numba pass"]]})
            print(f"{name:30s} fused {fused:9.0f}  numba pass {separate:9.0f}  {fused / separate:.2f}x", flush=True)
    result = {"benchmark": "fused_flip", "command": command_line(), "machine": machine(), "date": now(),
              "threads": args.threads, "epochs": args.epochs, "photos": args.photos, "rows": rows}
    out = write_json(args.out, result)
    lines = ["# RandomHorizontalFlip fused into the gather vs a separate pass", "",
             f"{provenance(result)}: {args.threads} loader thread(s), medians of {args.epochs} interleaved epochs (img/s).",
             "", "| case | fused | separate numba pass | fused / pass |", "|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['fused_img_per_s']:,} | {r['numba_pass_img_per_s']:,} | {r['ratio']:.2f}x |"
              for r in rows]
    write_markdown(out, lines)
    return result


if __name__ == "__main__":
    main()
