"""Loader throughput: fastprune vs ffcv 1.0.2's Loader vs torch DataLoader (torchvision v2).

Same files and the same pipeline for every system: decode + random crop (padding 4) + horizontal
flip + normalize to float32 NCHW, batch 256. Data (Fashion-MNIST train, 60k images, grey
replicated to RGB):
  raw28   raw 28x28 pixels
  raw32   raw 32x32: Fashion-MNIST zero-padded by 2 pixels on each side
  jpeg32  the raw32 images stored as JPEG (quality 90)
Both fastprune and ffcv read the same .beton file, written by ffcv's own DatasetWriter.
Images/s = images delivered per second of iterating an epoch, median over --epochs repetitions
after one warm-up epoch (which includes numba compilation). The torch DataLoader runs a fixed
--torch-batches per repetition (it is too slow for whole epochs).

ImageNet-like rows (--photos N, default 2000; 0 skips them): N variable-size natural-photo JPEGs
cut (varied size 200-640 px on the long side, aspect 0.6-1.7) from the colour photos that ship
inside pip packages (scikit-image's skimage/data, matplotlib's sample_data; `pip install
scikit-image` for more than one photo), in an image folder of 10 classes. Each storage size
(--max-sides, default 256 512) is converted twice, timed: `fastprune convert --jpeg --max-side S`
(from_image_folder, 2 workers) and ffcv's DatasetWriter (RGBImageField jpg, max_resolution S,
quality 90, torchvision ImageFolder, 2 workers). Both loaders then read the ffcv-written file, batch
128: RandomResizedCrop 160 / 224 + flip + normalize (ffcv: RandomResizedCropRGBImageDecoder) and
CenterCrop 224, ratio 224/256 + normalize (ffcv: CenterCropRGBImageDecoder), fastprune and ffcv
epochs interleaved; fastprune antialiases crops that shrink (ffcv: cv2.INTER_AREA), and its 2-tap
resize (antialias=False) is timed beside it.

Modes:
  python benchmarks/loader_throughput.py             throughput table, keep-0.5 epoch, JSON
  python benchmarks/loader_throughput.py --rss       RSS per epoch over 20 epochs of raw32
"""

from __future__ import annotations

import argparse
import gzip
import math
import os
import resource
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from fastprune.bench.machine import RESULTS, command_line, machine, now, write_json
from fastprune.loader import Loader, Normalize, RandomCrop, RandomHorizontalFlip

MEAN, STD = (0.286, 0.286, 0.286), (0.353, 0.353, 0.353)
FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


# -- data ---------------------------------------------------------------------------------------

def fashion_mnist_rgb(limit: int | None) -> np.ndarray:
    with gzip.open(FMNIST, "rb") as f:
        raw = f.read()
    count = int.from_bytes(raw[4:8], "big")
    grey = np.frombuffer(raw, np.uint8, offset=16).reshape(count, 28, 28)[:limit]
    return np.repeat(grey[..., None], 3, axis=-1)


class _Arrays:
    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], i % 10


def write_ffcv(path: Path, images: np.ndarray, mode: str) -> Path:
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    if not path.exists():
        DatasetWriter(str(path), {"image": RGBImageField(write_mode=mode, jpeg_quality=90), "label": IntField()},
                      num_workers=2).from_indexed_dataset(_Arrays(images))
    return path


def datasets(workdir: Path, limit: int | None) -> dict[str, tuple[Path, np.ndarray]]:
    raw28 = fashion_mnist_rgb(limit)
    raw32 = np.pad(raw28, ((0, 0), (2, 2), (2, 2), (0, 0)))
    tag = f"{len(raw28)}"
    return {"raw28": (write_ffcv(workdir / f"raw28_{tag}.beton", raw28, "raw"), raw28),
            "raw32": (write_ffcv(workdir / f"raw32_{tag}.beton", raw32, "raw"), raw32),
            "jpeg32": (write_ffcv(workdir / f"jpeg32_{tag}.beton", raw32, "jpg"), raw32)}


# -- the three systems --------------------------------------------------------------------------

def fastprune_loader(path, threads, sampler=None):
    return Loader(path, 256, threads=threads, sampler=sampler, seed=0,
                  transforms=[RandomCrop(padding=4), RandomHorizontalFlip(), Normalize(MEAN, STD)])


def ffcv_loader(path, threads):
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import SimpleRGBImageDecoder
    from ffcv.loader import Loader as FfcvLoader
    from ffcv.loader import OrderOption
    from ffcv.transforms import NormalizeImage, RandomHorizontalFlip as FFlip, RandomTranslate, ToTensor, ToTorchImage

    image = [SimpleRGBImageDecoder(), RandomTranslate(padding=4), FFlip(),
             NormalizeImage(np.array(MEAN) * 255, np.array(STD) * 255, np.float32),
             ToTensor(), ToTorchImage(channels_last=False)]
    return FfcvLoader(str(path), batch_size=256, num_workers=threads, order=OrderOption.RANDOM, os_cache=True,
                      pipelines={"image": image, "label": [IntDecoder(), ToTensor()]})


class _TorchImages(torch.utils.data.Dataset):
    """Per-sample torchvision v2 pipeline over raw pixels or JPEG bytes (decoded by torchvision)."""

    def __init__(self, images, jpeg: bool):
        from torchvision.io import encode_jpeg
        from torchvision.transforms import v2

        chw = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
        self.items = [encode_jpeg(im, quality=90) for im in chw] if jpeg else chw
        self.jpeg = jpeg
        size = images.shape[1]
        self.transform = v2.Compose([v2.RandomCrop(size, padding=4), v2.RandomHorizontalFlip(),
                                     v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        from torchvision.io import decode_jpeg

        image = decode_jpeg(self.items[i]) if self.jpeg else self.items[i]
        return self.transform(image), i % 10


def torch_loader(images, jpeg, workers):
    return torch.utils.data.DataLoader(_TorchImages(images, jpeg), batch_size=256, shuffle=True,
                                       num_workers=workers, persistent_workers=workers > 0)


# -- timing -------------------------------------------------------------------------------------

def epoch_rate(loader, max_batches=None) -> float:
    start, count = time.perf_counter(), 0
    for k, (images, *_rest) in enumerate(loader):
        count += images.shape[0]
        if max_batches is not None and k + 1 >= max_batches:
            break
    return count / (time.perf_counter() - start)


def measure(loader, epochs, max_batches=None) -> list[float]:
    epoch_rate(loader, max_batches)  # warm-up: compilation, page cache, worker start
    return [epoch_rate(loader, max_batches) for _ in range(epochs)]


class HalfSampler:
    """A fixed random half of the samples (the loader only ever touches those)."""

    def __init__(self, n):
        self.num_samples = n
        self.ids = np.sort(np.random.default_rng(0).permutation(n)[: n // 2]).astype(np.int64)

    def select(self, epoch):
        return self.ids, np.ones(len(self.ids), np.float32)

    def num_selected(self, epoch):
        return len(self.ids)


def epoch_seconds(loader) -> float:
    start = time.perf_counter()
    for _ in loader:
        pass
    return time.perf_counter() - start


def run_throughput(args, data) -> dict:
    rows, ratios = [], {}
    for name, (path, images) in data.items():
        for threads in args.threads:
            row = {}
            for system, make, batches in (("fastprune", lambda: fastprune_loader(path, threads), None),
                                          ("ffcv", lambda: ffcv_loader(path, threads), None)):
                rates = measure(make(), args.epochs, batches)
                row[system] = statistics.median(rates)
                rows.append({"system": system, "data": name, "threads": threads,
                             "img_per_s_median": round(row[system]), "img_per_s_all": [round(r) for r in rates]})
                print(f"{system:>18} {name:>7} threads={threads}: {row[system]:>10.0f} img/s", flush=True)
            ratios[f"fastprune/ffcv {name} t{threads}"] = round(row["fastprune"] / row["ffcv"], 2)
        for workers in args.torch_workers:
            rates = measure(torch_loader(images, name.startswith("jpeg"), workers), max(3, args.epochs // 2),
                            args.torch_batches)
            rows.append({"system": "torch_dataloader", "data": name, "threads": workers,
                         "img_per_s_median": round(statistics.median(rates)),
                         "img_per_s_all": [round(r) for r in rates]})
            print(f"{'torch_dataloader':>18} {name:>7} workers={workers}: {statistics.median(rates):>10.0f} img/s",
                  flush=True)
        best = lambda system: max(r["img_per_s_median"] for r in rows if r["system"] == system and r["data"] == name)
        ratios[f"fastprune/torch best {name}"] = round(best("fastprune") / best("torch_dataloader"), 2)
    return {"runs": rows, "ratios": ratios}


def run_keep_half(args, data) -> dict:
    path, images = data["raw32"]
    threads = max(args.threads)
    loaders = {"full": fastprune_loader(path, threads),
               "half": fastprune_loader(path, threads, HalfSampler(len(images)))}
    seconds = interleaved(epoch_seconds, loaders, args.epochs)  # so that noise hits both alike
    full, half = seconds["full"], seconds["half"]
    ratio = statistics.median(half) / statistics.median(full)
    print(f"keep 0.5 epoch / full epoch (raw32, threads={threads}): {ratio:.3f} "
          f"({statistics.median(half) * 1e3:.1f} ms / {statistics.median(full) * 1e3:.1f} ms)")
    return {"data": "raw32", "threads": threads, "full_s": full, "half_s": half, "ratio_median": round(ratio, 3)}


# -- ImageNet-like photos ------------------------------------------------------------------------

PHOTO_MEAN, PHOTO_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_SKIMAGE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "hubble_deep_field.jpg", "ihc.png",
                   "motorcycle_left.png", "motorcycle_right.png", "retina.jpg", "rocket.jpg")


def photo_files() -> list[Path]:
    """Colour photos shipped inside installed packages (found by path: nothing is imported)."""
    import importlib.util

    found = []
    for package, folder, names in (("skimage", "data", _SKIMAGE_PHOTOS),
                                   ("matplotlib", "mpl-data/sample_data", ("grace_hopper.jpg",))):
        spec = importlib.util.find_spec(package)
        if spec and spec.submodule_search_locations:
            base = Path(list(spec.submodule_search_locations)[0]) / folder
            found += [base / n for n in names if (base / n).exists()]
    if not found:
        raise SystemExit("no sample photos found: pip install scikit-image (or matplotlib)")
    return found


def photo_folder(workdir: Path, count: int, workers: int = 1) -> Path:
    """An image folder of `count` JPEG crops of varied size and aspect (deterministic: crop i
    depends only on i, so `workers` processes write the same files as one)."""
    from concurrent.futures import ProcessPoolExecutor

    root = workdir / f"photos_{count}"
    if (root / ".complete").exists():
        return root
    for c in range(10):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
    if workers <= 1:
        _write_photo_crops(root, range(count))
    else:
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_write_photo_crops, [root] * workers, [range(w, count, workers) for w in range(workers)]))
    (root / ".complete").touch()
    return root


def _write_photo_crops(root: Path, indices) -> None:
    from PIL import Image

    photos = [Image.open(p).convert("RGB") for p in photo_files()]
    for i in indices:
        rng = np.random.default_rng([0, i])
        photo = photos[i % len(photos)]
        aspect = math.exp(rng.uniform(math.log(0.6), math.log(1.7)))
        area = rng.uniform(0.25, 1.0) * photo.width * photo.height
        w = min(photo.width, max(16, round(math.sqrt(area * aspect))))
        h = min(photo.height, max(16, round(math.sqrt(area / aspect))))
        left, top = int(rng.integers(0, photo.width - w + 1)), int(rng.integers(0, photo.height - h + 1))
        long_side = int(rng.integers(200, 641))
        scale = long_side / max(w, h)
        crop = photo.crop((left, top, left + w, top + h)).resize((max(1, round(w * scale)), max(1, round(h * scale))),
                                                                 Image.Resampling.BILINEAR)
        crop.save(root / f"class{i % 10}" / f"{i:06d}.jpg", quality=int(rng.integers(85, 96)))


def photo_store(workdir: Path, count: int, max_side: int = 256, workers: int = 1) -> Path:
    """A fastprune store of :func:`photo_folder`'s `count` photos at `max_side` (JPEG, quality
    90), converted once per workdir."""
    store = workdir / f"photos{count}_{max_side}.beton"
    if not store.exists():
        convert_fastprune(photo_folder(workdir, count, workers), store, max_side, workers)
    return store


def convert_fastprune(folder: Path, out: Path, max_side: int, workers: int) -> None:
    from fastprune.convert.image_folder import from_image_folder

    from_image_folder(folder, out, jpeg=True, quality=90, max_side=max_side, workers=workers, progress=False)


def convert_ffcv(folder: Path, out: Path, max_side: int, workers: int) -> None:
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter
    from torchvision.datasets import ImageFolder

    DatasetWriter(str(out), {"image": RGBImageField(write_mode="jpg", max_resolution=max_side, jpeg_quality=90),
                             "label": IntField()}, num_workers=workers).from_indexed_dataset(ImageFolder(str(folder)))


def photo_pipeline(kind: str, size: int, antialias: bool = True):
    from fastprune.loader import CenterCrop, RandomResizedCrop

    if kind == "rrc":
        return [RandomResizedCrop(size, antialias=antialias), RandomHorizontalFlip(), Normalize(PHOTO_MEAN, PHOTO_STD)]
    return [CenterCrop(size, ratio=224 / 256, antialias=antialias), Normalize(PHOTO_MEAN, PHOTO_STD)]


def ffcv_photo_loader(path, threads, kind: str, size: int):
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import CenterCropRGBImageDecoder, RandomResizedCropRGBImageDecoder
    from ffcv.loader import Loader as FfcvLoader
    from ffcv.loader import OrderOption
    from ffcv.transforms import NormalizeImage, RandomHorizontalFlip as FFlip, ToTensor, ToTorchImage

    normalize = [NormalizeImage(np.array(PHOTO_MEAN) * 255, np.array(PHOTO_STD) * 255, np.float32), ToTensor(),
                 ToTorchImage(channels_last=False)]
    image = ([RandomResizedCropRGBImageDecoder((size, size)), FFlip()] if kind == "rrc"
             else [CenterCropRGBImageDecoder((size, size), ratio=224 / 256)]) + normalize
    return FfcvLoader(str(path), batch_size=128, num_workers=threads, order=OrderOption.RANDOM, os_cache=True,
                      drop_last=False, pipelines={"image": image, "label": [IntDecoder(), ToTensor()]})


def interleaved(measure, loaders: dict, epochs: int) -> dict[str, list[float]]:
    """Warm every loader up, then measure one epoch of each in turn, `epochs` times, each round
    starting one loader later, so that no loader is always the one timed right after another
    (in a fixed order the antialiased loader, always right after ffcv, read 0.75-0.82x the 2-tap
    one on crops that take the same code path in both)."""
    for loader in loaders.values():
        measure(loader)
    results = {name: [] for name in loaders}
    names = list(loaders)
    for round_ in range(epochs):
        start = round_ % len(names)
        for name in names[start:] + names[:start]:
            results[name].append(measure(loaders[name]))
    return results


def run_photos(args) -> dict:
    folder = photo_folder(args.workdir, args.photos)
    rows, ratios, conversion = [], {}, []
    for max_side in args.max_sides:
        times = {"fastprune": [], "ffcv": []}
        for rep in range(args.convert_reps):  # interleaved; the last ffcv file is the one both loaders read
            for system, convert in (("fastprune", convert_fastprune), ("ffcv", convert_ffcv)):
                out = args.workdir / f"photos{args.photos}_{max_side}_{system}.beton"
                out.unlink(missing_ok=True)
                start = time.perf_counter()
                convert(folder, out, max_side, 2)
                times[system].append(time.perf_counter() - start)
        conversion.append({"max_side": max_side, "images": args.photos, "workers": 2,
                           **{f"{k}_s": [round(t, 3) for t in v] for k, v in times.items()},
                           **{f"{k}_bytes": (args.workdir / f"photos{args.photos}_{max_side}_{k}.beton").stat().st_size
                              for k in times}})
        ratio = statistics.median(times["ffcv"]) / statistics.median(times["fastprune"])
        ratios[f"conversion fastprune/ffcv speed max_side {max_side}"] = round(ratio, 2)
        print(f"convert max_side={max_side}: fastprune {statistics.median(times['fastprune']):.2f} s, "
              f"ffcv {statistics.median(times['ffcv']):.2f} s ({ratio:.2f}x)", flush=True)
        path = args.workdir / f"photos{args.photos}_{max_side}_ffcv.beton"
        for kind, size in (("rrc", 160), ("rrc", 224), ("center", 224)):
            data = f"photo{max_side}_{kind}{size}"
            for threads in args.threads:
                # fastprune antialiases the crops that shrink (as torchvision, PIL, and ffcv's
                # cv2.INTER_AREA do); its 2-tap resize (antialias=False) runs beside it
                loaders = {"fastprune": Loader(path, 128, threads=threads, seed=0, transforms=photo_pipeline(kind, size)),
                           "fastprune_2tap": Loader(path, 128, threads=threads, seed=0,
                                                    transforms=photo_pipeline(kind, size, antialias=False)),
                           "ffcv": ffcv_photo_loader(path, threads, kind, size)}
                rates = interleaved(epoch_rate, loaders, args.epochs)
                for system, r in rates.items():
                    rows.append({"system": system, "data": data, "threads": threads,
                                 "img_per_s_median": round(statistics.median(r)), "img_per_s_all": [round(x) for x in r]})
                median = {system: statistics.median(r) for system, r in rates.items()}
                ratio = median["fastprune"] / median["ffcv"]
                ratios[f"fastprune/ffcv {data} t{threads}"] = round(ratio, 2)
                ratios[f"antialias/2-tap {data} t{threads}"] = round(median["fastprune"] / median["fastprune_2tap"], 2)
                print(f"{data:>22} threads={threads}: fastprune {median['fastprune']:7.0f} img/s "
                      f"(2-tap {median['fastprune_2tap']:7.0f}), ffcv {median['ffcv']:7.0f} img/s ({ratio:.2f}x)",
                      flush=True)
    return {"runs": rows, "ratios": ratios, "conversion": conversion,
            "keep_half": photo_keep_half(args, args.workdir / f"photos{args.photos}_{args.max_sides[0]}_ffcv.beton")}


def photo_keep_half(args, path: Path) -> dict:
    threads = max(args.threads)
    make = lambda sampler: Loader(path, 128, threads=threads, seed=0, sampler=sampler,
                                  transforms=photo_pipeline("rrc", 224))
    seconds = interleaved(epoch_seconds, {"full": make(None), "half": make(HalfSampler(args.photos))}, args.epochs)
    full, half = seconds["full"], seconds["half"]
    ratio = statistics.median(half) / statistics.median(full)
    print(f"keep 0.5 epoch / full epoch (photos, RRC 224, threads={threads}): {ratio:.3f}")
    return {"data": f"photo{args.max_sides[0]}_rrc224", "threads": threads, "full_s": full, "half_s": half,
            "ratio_median": round(ratio, 3)}


def run_rss(args, data) -> dict:
    import psutil

    path, images = data["raw32"]
    loader = fastprune_loader(path, max(args.threads))
    process, per_epoch = psutil.Process(), []
    print(f"store {os.path.getsize(path) / 2**20:.0f} MiB; prefetch buffers ~{2 * 2 * 256 * 3 * 32 * 32 * 5 / 2**20:.0f} MiB")
    for epoch in range(args.rss_epochs):
        for _ in loader:
            pass
        info = process.memory_full_info()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        per_epoch.append({"epoch": epoch, "rss_mib": round(info.rss / 2**20, 1), "uss_mib": round(info.uss / 2**20, 1),
                          "peak_rss_mib": round(peak, 1)})
        print(f"epoch {epoch:>2}: rss {info.rss / 2**20:7.1f} MiB  uss {info.uss / 2**20:7.1f} MiB  "
              f"peak {peak:7.1f} MiB", flush=True)
    return {"store_mib": round(os.path.getsize(path) / 2**20, 1), "epochs": per_epoch}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=5, help="timed epochs per configuration (after 1 warm-up)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--torch-workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--torch-batches", type=int, default=30, help="batches per torch DataLoader repetition")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N images (default: all 60k)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/fastprune-bench"))
    parser.add_argument("--rss", action="store_true", help="only the RSS-over-epochs check")
    parser.add_argument("--rss-epochs", type=int, default=20)
    parser.add_argument("--photos", type=int, default=2000, help="ImageNet-like photo JPEGs (0: skip those rows)")
    parser.add_argument("--max-sides", type=int, nargs="+", default=[256, 512], help="photo storage sizes")
    parser.add_argument("--convert-reps", type=int, default=2, help="timed conversions per system and size")
    parser.add_argument("--no-small", action="store_true", help="skip the 28/32 px rows")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    data = None if args.no_small and not args.rss else datasets(args.workdir, args.limit)
    result = {"benchmark": "loader_throughput", "command": command_line(),
              "machine": machine(), "date": now(),
              "note": "measured while other processes may share the 2 cores; batch 256; pipeline = decode + "
                      "random crop (pad 4) + flip + normalize to float32 NCHW; raw32 = Fashion-MNIST padded"}
    if args.rss:
        result["rss"] = run_rss(args, data)
        name = "loader_rss"
    else:
        result.update({"runs": [], "ratios": {}})
        if data is not None:
            result.update(run_throughput(args, data))
            result["keep_half"] = run_keep_half(args, data)
        if args.photos:
            photos = run_photos(args)
            result["runs"] += photos["runs"]
            result["ratios"].update(photos["ratios"])
            result["photo_conversion"] = photos["conversion"]
            result["photo_keep_half"] = photos["keep_half"]
        print("\nratios:")
        for key, value in result["ratios"].items():
            print(f"  {key:>32}: {value:.2f}x")
        name = "loader_throughput"
    out = write_json(args.out or RESULTS / f"{name}.json", result)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
