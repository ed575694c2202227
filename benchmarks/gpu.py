"""The GPU benchmark (issue 35): does the data path keep a GPU busy, and does pruning save GPU time?

One command, no network, at most ~6 minutes on one GPU; every figure compares against a baseline
measured in the same run:

  (a) feed: fastprune.Loader to the device, images/s at each --threads count, for raw 28 px
      (Fashion-MNIST, flip + normalize) and JPEG photos (RandomResizedCrop 160 and 224 + flip +
      normalize), with Normalize on the device (uint8 crosses PCIe, the default for CUDA) and on
      the host (float32 crosses), batch 256;
  (b) step vs fit: the model's training step alone (one resident batch, same precision and layout)
      against a full-data epoch through fastprune.train.fit (loader, selection, updates included),
      as a fraction of the step rate, with the GPU busy % (nvml) during the fit epoch and the host
      seconds fit spent blocked on the loader (its data_wait_s: near 0, the gap is not the data
      path's); for the benchmark recipe (SmallResNet on Fashion-MNIST) and for --photo-model at
      --photo-crop px;
  (c) end to end: full data vs eps-greedy and UCB at keep 0.5 through fastprune.bench.compare,
      for the benchmark recipe (--seeds) and for the photo model on the JPEG store (one seed:
      speed only; the photo store's classes are arbitrary crops, its accuracy means nothing).

Data: Debian's Fashion-MNIST IDX files (--fmnist) and --photos JPEG crops cut from the sample photos
that ship inside pip packages (scikit-image, matplotlib), converted at --photo-max-side.

    python benchmarks/gpu.py                      # on a GPU machine: benchmarks/results/gpu.json + .md
    python benchmarks/gpu.py --tiny --device cpu  # the dry run the test suite runs (seconds, CPU)

Results: JSON as ../shared/BENCHMARKS.md describes, plus a markdown summary next to it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling script's photo helpers
from loader_throughput import photo_store  # noqa: E402

import fastprune.loader.loader as loader_module  # noqa: E402
from fastprune.bench import compare  # noqa: E402
from fastprune.bench.machine import RESULTS, command_line, machine, now, write_json  # noqa: E402
from fastprune.convert import from_idx  # noqa: E402
from fastprune.loader import Loader, Normalize, RandomHorizontalFlip, RandomResizedCrop  # noqa: E402
from fastprune.train.device import device_record, resolve_device, run_amp, synchronize  # noqa: E402
from fastprune.train.loop import COMPILE_CHOICES  # noqa: E402
from fastprune.train.recipe import RECIPE, ModelSpec, run_recipe  # noqa: E402

FMNIST = Path("/usr/share/datasets/fashion-mnist")
PHOTO_MEAN, PHOTO_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
FMNIST_MEAN, FMNIST_STD = (0.286,) * 3, (0.353,) * 3


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--fmnist", type=Path, default=FMNIST, help="Fashion-MNIST IDX folder")
    p.add_argument("--photos", type=int, default=12800, help="JPEG photo crops to convert")
    p.add_argument("--photo-max-side", type=int, default=256)
    p.add_argument("--photo-model", default="torchvision.models:resnet50", help="MODULE:CALLABLE or a model name")
    p.add_argument("--photo-crop", type=int, default=160)
    p.add_argument("--photo-epochs", type=int, default=3)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 4, 8, 16], help="loader threads for (a)")
    p.add_argument("--fit-threads", type=int, nargs="+", default=[16],
                   help="loader threads for (b), each timed (several: do loader threads compete with the thread "
                        "that launches the kernels?); (c) runs through fastprune.bench, whose loaders take their "
                        "own default on a GPU")
    p.add_argument("--fit-nice", type=int, nargs="+", default=[10],
                   help="Loader(thread_nice=...) values for (b), each timed at every --fit-threads count "
                        "(10 is what a CUDA loader uses by default; 0 = producers at the launching thread's priority)")
    p.add_argument("--fit-first-round", nargs="+", default=["pooled"], choices=["pooled", "alone"],
                   help="(b) with the first round of each epoch's batches gathered in turns on the loader's "
                        "whole native pool (the default) and/or by each producer alone (as before 2026-12-04)")
    p.add_argument("--epochs", type=int, default=RECIPE.epochs, help="benchmark recipe epochs in (c)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--antialias", default="on", choices=["on", "off"],
                   help="(a)'s JPEG crops: antialiased where they shrink (the default since 2026-12-05) or "
                        "the 2-tap resize the 18.0k img/s baseline was measured with")
    p.add_argument("--feed-batches", type=int, default=60, help="batches timed per feed measurement")
    p.add_argument("--reps", type=int, default=3, help="repetitions per feed/step measurement (median)")
    p.add_argument("--fmnist-limit", type=int, default=None, help="use the first N training images")
    p.add_argument("--compile", default="off", choices=COMPILE_CHOICES,
                   help="(b) also times the benchmark recipe through fit with this torch.compile mode")
    p.add_argument("--skip", nargs="*", default=[], choices=["feed", "step", "end_to_end"])
    p.add_argument("--tiny", action="store_true", help="CPU dry run: tiny data, 1 epoch, 1 seed, small models")
    p.add_argument("--workdir", type=Path, default=None, help="where stores are written (default: a temp dir)")
    p.add_argument("--out", type=Path, default=RESULTS / "gpu.json")
    args = p.parse_args(argv)
    if args.tiny:
        args.photos, args.photo_max_side, args.photo_crop, args.photo_epochs = 48, 64, 32, 1
        args.photo_model, args.threads, args.fit_threads, args.epochs = "small_resnet", [1, 2], [2], 1
        args.fit_nice, args.fit_first_round = [0, 10], ["pooled", "alone"]
        args.seeds, args.feed_batches, args.reps, args.fmnist_limit = [0], 2, 1, args.fmnist_limit or 512
    return args


# -- data ---------------------------------------------------------------------------------------

def fmnist_stores(args, workdir: Path) -> tuple[Path, Path]:
    """(train, test) stores; with --fmnist-limit, the first N images of each split."""
    if not args.fmnist_limit:
        return tuple(from_idx(args.fmnist, workdir / f"fmnist-{split}.beton", split=split, progress=False)
                     for split in ("train", "test"))
    from fastprune.convert import from_arrays
    from fastprune.convert.idx import find_idx_files, load_idx

    stores = []
    for split in ("train", "test"):
        images, labels = load_idx(*find_idx_files(args.fmnist, split))
        stores.append(from_arrays(images[:args.fmnist_limit], labels[:args.fmnist_limit],  # gray stored as RGB
                                  workdir / f"fmnist-{split}-limit.beton",
                                  progress=False))
    return tuple(stores)


def photo_stores(args, workdir: Path) -> tuple[Path, Path]:
    import os

    store = photo_store(workdir, args.photos, args.photo_max_side, workers=os.cpu_count() or 1)
    return store, store  # (c) times training; the photo "accuracy" is not a claim


# -- (a) feed -----------------------------------------------------------------------------------

def feed_rate(loader: Loader, batches: int, device) -> float:
    """Images/s of an epoch's batches 2..``batches`` (at least 2), timed from the first batch's
    arrival to the last one's, synchronized. Neither the producers' start-up nor, when the loop is
    left, the wait for the batches still being built counts: both did when the clock ran around
    the whole loop, and they made a 40-batch rate of raw 28 px batches 0.6-0.7x a 200-batch one at
    8 threads on the CPU (a CUDA-path audit); gpu_h200.json's raw rows were measured that way."""
    synchronize(device)
    loop_start = start = time.perf_counter()
    count, first, end = 0, None, None
    for k, batch in enumerate(loader):
        if first is None:  # the first batch is here: the clock starts, its images do not count
            synchronize(device)
            start, first = time.perf_counter(), batch.images.shape[0]
            continue
        count += batch.images.shape[0]
        if k + 1 >= max(batches, 2):
            synchronize(device)  # the last counted batch's copy and normalization are done
            end = time.perf_counter()  # inside the loop: leaving it closes the epoch
            break
    if end is None:  # the epoch ended first
        synchronize(device)
        end = time.perf_counter()
    if count == 0:  # a one-batch epoch (the --tiny run's stores): the whole loop, start-up included
        return (first or 0) / (end - loop_start)
    return count / (end - start)


def run_feed(args, device, fmnist: Path, photos: Path) -> list[dict]:
    configs = [("raw28", fmnist, lambda: [RandomHorizontalFlip(), Normalize(FMNIST_MEAN, FMNIST_STD)])]
    for size in (160, 224) if not args.tiny else (args.photo_crop,):
        configs.append((f"jpeg_rrc{size}", photos, lambda size=size: [
            RandomResizedCrop(size, antialias=args.antialias == "on"), RandomHorizontalFlip(),
            Normalize(PHOTO_MEAN, PHOTO_STD, channels_last=True)]))
    rows = []
    for data, store, pipeline in configs:
        for threads in args.threads:
            rates = {}
            for where in ("device", "host"):
                loader = Loader(store, 256, transforms=pipeline(), threads=threads, seed=0, device=device,
                                normalize_on=where)
                feed_rate(loader, 2, device)  # warm-up: numba compilation, page cache, pinned buffers
                rates[where] = [feed_rate(loader, args.feed_batches, device) for _ in range(args.reps)]
            for where, r in rates.items():
                rows.append({"system": "fastprune", "data": data, "threads": threads, "normalize_on": where,
                             "antialias": args.antialias if data.startswith("jpeg") else None,
                             "img_per_s_median": round(statistics.median(r)), "img_per_s_all": [round(x) for x in r]})
            gain = statistics.median(rates["device"]) / statistics.median(rates["host"])
            print(f"(a) {data:>12} threads={threads:>2}: normalize on device {statistics.median(rates['device']):9.0f} "
                  f"img/s, on host {statistics.median(rates['host']):9.0f} img/s ({gain:.2f}x)", flush=True)
    return rows


# -- (b) step alone vs fit ----------------------------------------------------------------------

def step_rate(model_spec: ModelSpec, num_classes: int, size: int, batch: int, device, reps: int) -> float:
    """Training steps/s * batch of the model alone on one resident batch (no data path)."""
    from fastprune.train.device import autocast_dtype, memory_format_for
    from fastprune.train.schedule import make_optimizer

    model = model_spec.build(num_classes, 3).to(device)
    layout = memory_format_for(device, True)  # NHWC, as the benchmark's runs (bench Settings.channels_last)
    model = model.to(memory_format=layout)
    optimizer = make_optimizer(model, 0.01, 5e-4)
    x = torch.randn(batch, 3, size, size, device=device).to(memory_format=layout)
    y = torch.randint(0, num_classes, (batch,), device=device)
    dtype = autocast_dtype(device, run_amp(device, "auto"))

    def steps(n):
        for _ in range(n):
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        synchronize(device)

    steps(5)  # warm-up: cuDNN autotune, allocator
    n = 30 if device.type == "cuda" else 2
    rates = []
    for _ in range(reps):
        start = time.perf_counter()
        steps(n)
        rates.append(n * batch / (time.perf_counter() - start))
    return statistics.median(rates)


def run_step_vs_fit(args, device, workloads) -> list[dict]:
    rows = []
    if args.compile != "off":  # the launch-bound recipe once more, compiled (epoch 1 pays the compile)
        workloads = [*workloads, (f"recipe+compile:{args.compile}", *workloads[0][1:])]
    for name, recipe, stores, num_classes in workloads:
        size = recipe.crop or 28
        alone = step_rate(recipe.model, num_classes, size, recipe.batch_size, device, args.reps)
        for threads in args.fit_threads:
            for nice in args.fit_nice:
                for first_round in args.fit_first_round:
                    rows.append(_fit_row(args, name, recipe, stores, device, threads, nice, first_round, alone))
    return rows


def _fit_row(args, name, recipe, stores, device, threads, nice, first_round, alone) -> dict:
    """(b) for one workload, loader thread count, thread_nice and first-round setting: a full-data
    epoch through fit against the step rate ``alone``."""
    # epoch 1 pays compilation and autotune; epoch 2 is timed; epoch 3, the last, is the one fit
    # evaluates (always the last), whose GPU busy % covers the evaluation too: timing epoch 2 of 2
    # mixed an evaluation pass into gpu_busy_pct_fit but not into fit_epoch_s (CUDA-path audit)
    fit_recipe = recipe.replace(epochs=3)
    loader_module.POOLED_FIRST_ROUND = first_round == "pooled"  # read by the Loaders run_recipe makes
    try:
        _, history = run_recipe(fit_recipe, "full", 1.0, 0, stores, device=device, threads=threads,
                                thread_nice=nice, channels_last=True, progress=False, log=None, eval_every=10,
                                compile=args.compile if "+compile" in name else False)
    finally:
        loader_module.POOLED_FIRST_ROUND = True
    last = history[1]
    assert last["val_acc"] is None, "the timed epoch must not be evaluated"
    through_fit = last["samples"] / last["train_s"]
    row = {"workload": name, "fit_threads": threads, "fit_thread_nice": nice, "fit_first_round": first_round,
           "step_img_per_s": round(alone),
           "fit_img_per_s": round(through_fit), "fit_epoch_s": round(last["train_s"], 3),
           "fit_fraction_of_step": round(through_fit / alone, 3),
           "gpu_busy_pct_fit": last["gpu_busy_pct"],  # nvml, sampled by run_recipe
           # the host blocked on the loader: near 0, the gap to the step rate is not the data path's
           "data_wait_s_fit": round(last["data_wait_s"], 3),
           "data_wait_fraction_fit": round(last["data_wait_s"] / last["train_s"], 3)}
    print(f"(b) {name}, {threads} loader threads at nice +{nice}, first round {first_round}: step alone {alone:,.0f} img/s, through fit {through_fit:,.0f} "
          f"img/s ({100 * through_fit / alone:.0f}%), GPU busy {row['gpu_busy_pct_fit']}, "
          f"waiting for data {row['data_wait_fraction_fit']:.0%} of the epoch", flush=True)
    return row


# -- (c) end to end -----------------------------------------------------------------------------

def run_end_to_end(args, device, workloads) -> list[dict]:
    rows = []
    for name, recipe, stores, _ in workloads:
        seeds = args.seeds if name == "recipe" else args.seeds[:1]
        epochs = recipe.epochs
        result = compare(*stores, model=recipe.model.factory or recipe.model.name, strategies=("full", "epsilon_greedy", "ucb"),
                         keep=0.5, epochs=epochs, seeds=seeds, device=str(device), threads=args.fit_threads[0],
                         eval_every=1 if name == "recipe" else epochs,
                         **_recipe_options(recipe))
        for row in result.rows:
            rows.append({"workload": name, "epochs": epochs, **row})
            print(f"(c) {name} {row['strategy']:>14} keep {row['keep']}: {row['acc_mean']:.2f}% "
                  f"{row['wall_s_median']:.1f} s, {row.get('speedup') or 1:.2f}x", flush=True)
    return rows


def _recipe_options(recipe) -> dict:
    options = {"batch_size": recipe.batch_size, "lr": recipe.lr}
    if recipe.crop:
        options["crop"] = recipe.crop
    if recipe.model.name == "small_resnet":
        options["widths"] = recipe.model.widths
    return options


# -- main ---------------------------------------------------------------------------------------

def main(argv=None) -> dict:
    args = parse_args(argv)
    device = resolve_device(args.device)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        fmnist = fmnist_stores(args, workdir)
        photos = photo_stores(args, workdir)
        recipe = RECIPE.replace(epochs=args.epochs) if not args.tiny else \
            RECIPE.replace(epochs=args.epochs, widths=(8, 16, 32), batch_size=64)
        photo_recipe = RECIPE.replace(epochs=args.photo_epochs, crop=args.photo_crop, lr=0.4,
                                      batch_size=256 if not args.tiny else 16, **_model_fields(args.photo_model))
        if args.tiny:
            photo_recipe = photo_recipe.replace(widths=(8, 16, 32))
        workloads = [("recipe", recipe, fmnist, 10), ("photos", photo_recipe, photos, 10)]
        result = {"benchmark": "gpu", "command": command_line(), "machine": machine(), "date": now(),
                  "device": {**device_record(device), "precision": run_amp(device, "auto")},
                  "feed": [], "step_vs_fit": [], "end_to_end": []}
        print(f"device {device}: {result['device']}", flush=True)
        sections = (("feed", "feed", lambda: run_feed(args, device, fmnist[0], photos[0])),
                    ("step", "step_vs_fit", lambda: run_step_vs_fit(args, device, workloads)),
                    ("end_to_end", "end_to_end", lambda: run_end_to_end(args, device, workloads)))
        for flag, key, run in sections:
            if flag not in args.skip:
                result[key] = run()
                save(args.out, result, started)  # a run cut short by a time limit keeps what it measured
    save(args.out, result, started)
    print(f"wrote {args.out} and {args.out.with_suffix('.md')} ({result['wall_s']} s)")
    return result


def save(out: Path, result: dict, started: float) -> None:
    result["wall_s"] = round(time.perf_counter() - started, 1)
    write_json(out, result)
    out.with_suffix(".md").write_text(markdown(result))


def _model_fields(name: str) -> dict:
    if ":" not in name:
        return {"name": name}
    from fastprune.models import load_model_factory

    return {"name": name, "factory": load_model_factory(name)}


def markdown(result: dict) -> str:
    lines = [f"# GPU benchmark, {result['date']}", "", f"`{result['command']}`", "",
             f"Device: {result['device']}; machine: {result['machine']['cpu']}, {result['machine']['cores']} cores.", ""]
    if result["feed"]:
        lines += ["## (a) Loader feed to the device (img/s, median)", "",
                  "| data | threads | normalize on device | on host | ratio |", "|---|---|---|---|---|"]
        by = {(r["data"], r["threads"], r["normalize_on"]): r["img_per_s_median"] for r in result["feed"]}
        for data, threads, where in by:
            if where == "device":
                dev, host = by[(data, threads, "device")], by[(data, threads, "host")]
                lines.append(f"| {data} | {threads} | {dev:,} | {host:,} | {dev / host:.2f}x |")
        lines.append("")
    if result["step_vs_fit"]:
        lines += ["## (b) Training step alone vs a full-data epoch through fit", "",
                  "| workload | loader threads | thread_nice | first round | step alone img/s | through fit img/s "
                  "| fraction | GPU busy % | data wait s (of epoch) |", "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['workload']} | {r.get('fit_threads', '')} | {r.get('fit_thread_nice', '')} | "
                  f"{r.get('fit_first_round', '')} | {r['step_img_per_s']:,} | {r['fit_img_per_s']:,} | "
                  f"{r['fit_fraction_of_step']:.0%} | {r['gpu_busy_pct_fit']} | "
                  f"{r['data_wait_s_fit']:.3f} ({r['data_wait_fraction_fit']:.0%}) |" for r in result["step_vs_fit"]]
        lines.append("")
    if result["end_to_end"]:
        lines += ["## (c) End to end, keep 0.5", "",
                  "| workload | strategy | seeds | accuracy % | train s (median) | speed-up (of medians) | delta pt |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['workload']} | {r['strategy']} | {r['seeds']} | {r['acc_mean']:.2f} | "
                  f"{r['wall_s_median']:.1f} | {r.get('speedup') or 1:.2f}x | {r.get('acc_delta_pt') or 0:+.2f} |"
                  for r in result["end_to_end"]]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
