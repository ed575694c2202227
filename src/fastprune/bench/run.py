"""Running the end-to-end benchmark: its data, how runs execute on this machine (:class:`Settings`),
and one timed run of the recipe (:func:`run_one`). The studies under studies/ run through here too,
so their runs are timed like the benchmark's."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from .._cpus import usable_cpus
from ..errors import ConfigError, ConversionError
from ..train.data import DataSpec
from ..train.device import (autocast_dtype, flushing_denormals, memory_format_for, resolve_device, run_amp,
                            synchronize)
from ..train.loop import COMPILE_CHOICES
from ..train.recipe import RECIPE, VAL_BATCH, Recipe, gpu_busy_of, run_recipe
from .plan import VERSIONED_PACKAGES


@dataclass(frozen=True)
class Settings:
    """How the runs execute on this machine (not what they learn, which is the recipe); a result
    file records them, and ``--continue`` requires the same. The defaults are ``fastprune bench``'s."""

    # The precision rule of every recipe run (train/device.run_amp): bf16 on a GPU of compute
    # capability 8.0+ (fp16 on older ones) and where it is fast on this CPU, else fp32 on the CPU.
    amp: str = "auto"
    channels_last: bool = True  # NHWC activations: faster with oneDNN on CPU and on CUDA
    threads: int = field(default_factory=usable_cpus)  # the CPUs this process may use
    # Late in training many activations and gradients become denormal, and x86 handles those in
    # slow microcode: flushing them to zero keeps late epochs as fast as early ones, same accuracy.
    flush_denormal: bool = True
    progress: bool = False  # a progress bar per epoch (not recorded: it changes no result)
    # Evaluate every N-th epoch and the last (recorded in the result's mode, not here: it changes
    # no accuracy or wall-clock, only how many points the accuracy curves have).
    eval_every: int = 1
    # "auto" (CUDA when available, else the CPU), "cpu", "cuda" or "cuda:N"; resolved() pins it.
    device: str = "auto"
    # torch.compile mode of the training forward ("off", "default", "reduce-overhead"...): recorded
    # only when on, so files measured before the option existed still continue.
    compile: str = "off"

    def __post_init__(self):  # fit's spellings too: True is "default", False or None "off"
        if self.compile is True or self.compile is False or self.compile is None:
            object.__setattr__(self, "compile", "default" if self.compile else "off")

    def resolved(self) -> Settings:
        """These settings with ``device`` resolved ("auto" -> "cuda" or "cpu"; ConfigError in one
        line for a malformed value or CUDA where there is none)."""
        if self.compile not in COMPILE_CHOICES:
            raise ConfigError(f"compile must be one of {', '.join(COMPILE_CHOICES)}, got {self.compile!r}")
        return dataclasses.replace(self, device=str(resolve_device(self.device)))

    @property
    def loader_threads(self) -> int | None:
        """The training and evaluation loaders' threads: ``threads`` on the CPU, where they share
        the cores with torch's; on a GPU the Loader's own default (every CPU for JPEG stores, at
        most 4 for raw pixels, where more threads only contend with the thread launching kernels)."""
        return None if self.device.startswith("cuda") else self.threads

    def apply(self) -> None:
        """Apply the settings that act on the whole process: torch threads, denormal flushing."""
        torch.set_num_threads(self.threads)
        torch.set_flush_denormal(self.flush_denormal)

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """:meth:`apply` for the duration of a ``with`` block, then the thread count and denormal
        flushing as they were: a library call must not leave the caller's process changed."""
        threads, flushing = torch.get_num_threads(), flushing_denormals()
        self.apply()
        try:
            yield
        finally:
            torch.set_num_threads(threads)
            torch.set_flush_denormal(flushing)

    def record(self) -> dict[str, Any]:
        """The settings a result file records. As files written before the device was a setting
        (all trained on the CPU, whose default was amp "bf16" where it is fast and "auto" (fp32)
        elsewhere) recorded them, so that ``--continue`` still accepts those: ``device`` only when it
        is not the CPU, and amp "auto" as "bf16" on a CPU where the rule picks bf16."""
        device = resolve_device(self.device)
        record = {name: value for name, value in dataclasses.asdict(self).items()
                  if name not in ("progress", "eval_every", "device")}
        if device.type == "cpu" and self.amp == "auto" and run_amp(device, "auto") == "bf16":
            record["amp"] = "bf16"
        if device.type != "cpu":
            record["device"] = str(device)
        if self.compile == "off":
            del record["compile"]
        return record


def prepare_stores(workdir: Path, train_limit: int | None) -> tuple[Path, Path]:
    """Convert Fashion-MNIST (train: the first ``train_limit`` images, test: all) once per workdir."""
    from ..convert import FASHION_MNIST_DIR, from_arrays
    from ..convert.idx import find_idx_files, load_idx

    if workdir.exists() and not workdir.is_dir():
        raise ConfigError(f"--workdir {workdir} is a file, not a folder")
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # before any conversion
        raise ConfigError(f"--workdir {workdir}: cannot make the folder: {exc.strerror or exc}") from None
    paths = []
    for split, limit in (("train", train_limit), ("test", None)):
        path = workdir / f"fashion-mnist-{split}{'' if limit is None else f'-{limit}'}.beton"
        try:
            images, labels = load_idx(*find_idx_files(FASHION_MNIST_DIR, split))  # 47 MB: read again each time
        except ConversionError:  # the dataset is gone: a sound cached store is all there is
            if not _verified(path):
                raise
            paths.append(path)
            continue
        if not _holds_conversion(path, images[:limit], labels[:limit]):
            from_arrays(images[:limit], labels[:limit], path, progress=False)
        paths.append(path)
    return paths[0], paths[1]


def _verified(path: Path) -> bool:
    """Whether ``path`` is a store whose checksums all hold (every sample's CRC: 0.2 s for the 60k)."""
    from ..store.reader import verify_file

    if not path.exists():
        return False
    checked = verify_file(path)
    return checked.ok and checked.has_checksums


def _holds_conversion(path: Path, images: np.ndarray, labels: np.ndarray) -> bool:
    """Whether the workdir's ``path`` is sound and holds as many images as ``images``, of their
    size, with ``labels``: a cached file that is damaged (its checksums), or another store copied
    over it, is converted again (it was trusted by its name, and a benchmark of 300 images was
    recorded as Fashion-MNIST's). The pixels themselves are left to the checksums."""
    from ..errors import FastpruneError
    from ..loader._source import open_source

    if not _verified(path):
        return False
    try:
        with open_source(path, None, "label", threads=1) as source:
            return (source.num_samples == len(labels) and source.uniform_shape == images.shape[1:3]
                    and bool(np.array_equal(source.labels, labels)))
    except (FastpruneError, ValueError):
        return False


def run_name(strategy_name: str, keep: float, seed: int) -> str:
    """A run's name in file and folder names: "ucb-keep0.5-seed0"."""
    return f"{strategy_name}-keep{keep:g}-seed{seed}"


def run_one(strategy_name: str, keep: float, seed: int, stores, settings, *, recipe: Recipe = RECIPE,
            strategy_options: dict | None = None, data: DataSpec | None = None,
            tensorboard: Path | None = None, kept_grid: Path | None = None) -> dict:
    """Train one model with ``recipe``; return its row of the JSON's "runs". ``strategy_options``
    override the strategy's library defaults (the held-out study uses them; the benchmark does not);
    ``data``: the stores' description, when the caller has it (else read off the stores).
    ``tensorboard``: a folder, which gets a TensorBoard log of the run in STRATEGY-keepK-seedS/;
    ``kept_grid``: a PNG path, whose name gets -STRATEGY-keepK-seedS for a pruned run's picture of
    the most- and least-kept images (drawn after the timed run)."""
    name = run_name(strategy_name, keep, seed)
    logger = None
    if tensorboard is not None:
        from ..store.reader import Store
        from ..train.tensorboard import TensorBoardLogger

        with Store(stores[0]) as store:  # a run (re)done replaces its folder's events (bench refuses others)
            logger = TensorBoardLogger(Path(tensorboard) / name, len(store), replace=True)
    strategy, history = run_recipe(recipe, strategy_name, keep, seed, stores, strategy_options=strategy_options,
                                   data=data, device=settings.device,
                                   threads=settings.loader_threads, amp=settings.amp,
                                   channels_last=settings.channels_last, progress=settings.progress,
                                   eval_every=settings.eval_every, log=None, on_epoch_end=logger,
                                   compile=False if settings.compile == "off" else settings.compile)
    if logger is not None:
        logger.close()
    if kept_grid is not None and strategy_name != "full":
        from ..prune.report import kept_grid as draw

        kept_grid = Path(kept_grid)
        draw(strategy, stores[0], kept_grid.with_name(f"{kept_grid.stem}-{name}{kept_grid.suffix}"),
             label_field=recipe.label_field)
    return _run_row(strategy_name, keep, seed, strategy, history)


def warm_up(stores, settings, recipe: Recipe = RECIPE, data: DataSpec | None = None) -> float:
    """One short untimed run (about 4 batches of a uniform subset, one epoch) before the timed
    ones, so numba compilation, oneDNN kernel selection and the page cache are not billed to
    whichever run happens to come first (the full-data baseline). On CUDA, first
    :func:`warm_up_steps`: CUDA's initialization and cuDNN's kernel choice for the model and input
    size the runs will time (12.5 s of the first run's first epoch on an H200). Returns its seconds."""
    from ..store.reader import Store
    from ..train.recipe import describe_recipe_data

    started = time.perf_counter()
    with Store(stores[0]) as store, Store(stores[1]) as val_store:
        keep = min(1.0, 4 * recipe.batch_size / len(store))
        sizes = min(recipe.batch_size, len(store)), min(VAL_BATCH, len(val_store))
    device = resolve_device(settings.device)
    if device.type == "cuda":
        data = data or describe_recipe_data(recipe, stores)
        warm_up_steps(recipe, data, device, amp=settings.amp, channels_last=settings.channels_last,
                      batch_size=sizes[0], eval_batch_size=sizes[1])
    run_one("uniform_random", keep, 0, stores, settings, recipe=recipe.replace(epochs=1), data=data)
    return time.perf_counter() - started


def architecture(recipe: Recipe, data: DataSpec) -> tuple[dict[str, Any], dict[str, str | None]]:
    """The model ``recipe`` builds for ``data``, as a result file records it (built once on the CPU;
    runs build their own): its class ("module.Class") and number of parameters, and
    :func:`model_code`."""
    model = recipe.model.build(data.num_classes, data.channels)
    kind = type(model)
    record = {"spec": recipe.model.name, "class": f"{kind.__module__}.{kind.__qualname__}",
              "parameters": sum(p.numel() for p in model.parameters())}
    return record, model_code(model, recipe.model)


def model_code(model: torch.nn.Module, spec) -> dict[str, str | None]:
    """What `bench --continue` compares of a model beyond its class and size, which a
    ``--model MODULE:CALLABLE`` whose code changed can keep: a digest of its layers as ``repr``
    lists them (an activation swapped; addresses left out), and one of the source files of the
    model function and of its own layer classes (an edited ``forward``), None where there are none
    (built-in models, code typed into a notebook). A record only: it never raises."""
    import hashlib
    import re

    from ..models import load_model_factory

    layers = re.sub(r" at 0x[0-9a-fA-F]+", "", repr(model))  # a Lambda(fn) module shows its function's address
    try:
        factory = spec.factory or (load_model_factory(spec.name) if ":" in spec.name else None)
    except ConfigError:  # built already, by name: cannot happen, but a record never stops a benchmark
        factory = None
    owners = [factory, *(type(module) for module in model.modules())]
    files = {path for owner in owners if owner is not None and _own_code(owner)
             for path in [_source_file(owner)] if path is not None}
    digests = sorted(digest for digest in map(_file_digest, files) if digest is not None)  # in no path's order
    return {"layers": hashlib.sha256(layers.encode()).hexdigest()[:16],
            "code": hashlib.sha256("".join(digests).encode()).hexdigest()[:16] if digests else None,
            "files": sorted(Path(path).name for path in files)}  # named by a refusal


def _own_code(owner) -> bool:
    module = getattr(owner, "__module__", None) or ""
    return module.split(".")[0] not in VERSIONED_PACKAGES


def _source_file(owner) -> str | None:
    """The file ``owner`` (a class or function) is defined in; None for one defined where no file
    holds it (a notebook or the REPL: OSError, a builtin or a functools.partial: TypeError)."""
    import inspect

    try:
        return inspect.getsourcefile(owner)
    except (TypeError, OSError):
        return None


def _file_digest(path: str) -> str | None:
    import hashlib

    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:  # gone from disk since it was imported
        return None


def input_size(recipe: Recipe, data: DataSpec) -> tuple[int, int]:
    """(height, width) of the images the runs feed the model: the recipe's crop, else the stores'
    one image size ("28x28")."""
    if recipe.crop:
        return recipe.crop, recipe.crop
    height, width = (int(side) for side in data.image_size.split("x"))
    return height, width


def warm_up_steps(recipe: Recipe, data: DataSpec, device, *, amp="auto", channels_last: bool = True,
                  batch_size: int | None = None, eval_batch_size: int = VAL_BATCH, steps: int = 3) -> int:
    """``steps`` forward/backward steps of ``recipe``'s model on random images of the size, batch,
    precision and memory layout the runs will train with, and one evaluation forward: CUDA's
    initialization and cuDNN's choice of kernels for those shapes happen here, untimed. The model is
    thrown away (runs build their own from their seed). Returns the steps taken."""
    device = resolve_device(device)
    dtype = autocast_dtype(device, run_amp(device, amp))
    memory_format = memory_format_for(device, channels_last)
    model = recipe.model.build(data.num_classes, data.channels).to(device).to(memory_format=memory_format)
    size = input_size(recipe, data)
    generator = torch.Generator().manual_seed(0)  # the global RNG is the runs'

    def batch(n):
        images = torch.randn(n, data.channels, *size, generator=generator)
        labels = torch.randint(0, data.num_classes, (n,), generator=generator)
        return images.to(device).contiguous(memory_format=memory_format), labels.to(device)

    images, labels = batch(batch_size or recipe.batch_size)
    model.train()
    for _ in range(steps):
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model(images)
        torch.nn.functional.cross_entropy(logits.float(), labels).backward()
        model.zero_grad(set_to_none=True)
    model.eval()
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        model(batch(eval_batch_size)[0])
    synchronize(device)
    return steps


def _run_row(strategy_name, keep, seed, strategy, history) -> dict:
    # Static methods score during their first full-data epochs; report that time separately too
    # (it is already inside wall_s).
    scoring_epochs = getattr(strategy, "score_epochs", 0)
    return {
        "strategy": strategy_name,
        "keep": keep,
        "seed": seed,
        "epochs": len(history),
        "final_acc": history[-1]["val_acc"],
        "wall_s": history[-1]["cumulative_train_s"],
        "eval_s": sum(r["eval_s"] for r in history),
        "scoring_s": sum(r["train_s"] for r in history[:scoring_epochs]),
        "pruning_overhead_s": sum(r["overhead_s"] for r in history),
        "data_wait_s": sum(r["data_wait_s"] for r in history),  # blocked on the loader (inside wall_s)
        "gpu_busy_pct": gpu_busy_of(history),  # None on the CPU or without nvml
        "samples_seen": sum(r["samples"] for r in history),
        "curve": [[round(r["cumulative_train_s"], 3), r["val_acc"]] for r in history if r["val_acc"] is not None],
        "history": history,
    }
