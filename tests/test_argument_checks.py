"""Python callers' arguments: a wrong value fails at the call, in one line naming the argument,
instead of a silent wrong result (an empty store, an optimizer that trains nothing, a strategy
that never prunes) or a failure after training has begun. Truthy strings ("no", "False") are not
taken as True, and floats are not cut to ints.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import fastprune
from fastprune.convert import from_arrays, from_idx, from_torch_dataset
from fastprune.errors import ConfigError, ConversionError
from fastprune.loader import Loader, Normalize, RandomHorizontalFlip
from fastprune.prune import EL2N, UCB, Full, InfoBatch, ScoreTable
from fastprune.store import IntField, RGBImageField, Store, write_dataset
from fastprune.train import fit
from fastprune.train.recipe import make_loaders

NORMALIZE = Normalize((0.5,) * 3, (0.25,) * 3)


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    out = tmp_path_factory.mktemp("args") / "small.beton"
    return from_arrays(rng.integers(0, 256, (64, 6, 6, 3), dtype=np.uint8), np.arange(64) % 4, out,
                       progress=False, workers=1)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(6 * 6 * 3, 4))


class _CountingModel(nn.Module):
    """Counts forward passes: a refusal must come before any training."""

    def __init__(self):
        super().__init__()
        self.inner, self.calls = _model(), 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


def _fit(store_path, model=None, strategy=None, epochs=2, **options):
    strategy = strategy if strategy is not None else UCB(64, keep=0.5, epochs=epochs)
    loader = Loader(store_path, 16, sampler=strategy, transforms=[NORMALIZE])
    return fit(model or _model(), loader, None, strategy, epochs, progress=False, log=None, **options)


# ---- silent wrong results --------------------------------------------------------------------

def test_fit_refuses_an_optimizer_over_another_models_parameters(store_path):
    model, other = _model(), _model()
    with pytest.raises(ConfigError, match="optimizer holds none of the model's trainable parameters"):
        _fit(store_path, model, optimizer=torch.optim.SGD(other.parameters(), lr=0.1))
    # fine-tuning a part of the model (the rest frozen or not) is accepted and trains that part
    before = model[1].bias.detach().clone()
    _fit(store_path, model, epochs=1, optimizer=torch.optim.SGD([model[1].bias], lr=0.5))
    assert not torch.equal(before, model[1].bias)


@pytest.mark.parametrize("chunk_size", [-1, 0, 2.5, "8"])
def test_write_dataset_refuses_a_chunk_size_that_is_no_count(tmp_path, chunk_size):
    rows = [(np.zeros(3, dtype=np.int64),) for _ in range(20)]
    from fastprune.store import NDArrayField
    with pytest.raises((ValueError, TypeError), match="write_dataset: chunk_size"):
        write_dataset(tmp_path / "x.beton", rows, {"x": NDArrayField(np.dtype("int64"), (3,))},
                      chunk_size=chunk_size, progress=False)
    assert not (tmp_path / "x.beton").exists()
    with pytest.raises((ValueError, TypeError), match="write_dataset: page_size"):
        write_dataset(tmp_path / "x.beton", rows, {"x": NDArrayField(np.dtype("int64"), (3,))},
                      page_size=4194304.0, progress=False)


@pytest.mark.parametrize("build", [
    lambda: UCB(64, 0.5, warmup_epochs=3, epochs=3),
    lambda: UCB(64, 0.5, final_full_epochs=3, epochs=3),
    lambda: UCB(64, 0.5, warmup_epochs=1, final_full_epochs=2, epochs=3),
    lambda: EL2N(64, 0.5, score_epochs=5, epochs=3),
])
def test_settings_that_never_prune_warn(build):
    with pytest.warns(RuntimeWarning, match="cover all 3 epochs: it never prunes"):
        strategy = build()
    assert all(strategy.num_selected(e) == 64 for e in range(3))


def test_settings_that_prune_or_a_full_baseline_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        UCB(64, 0.5, warmup_epochs=2, epochs=3)
        EL2N(64, 0.5, score_epochs=2, epochs=3)
        Full(64, epochs=1)
        UCB(64, 0.5, warmup_epochs=5)  # no run length given: nothing to compare with


def test_fit_refuses_a_strategy_built_for_another_run_length(store_path):
    model = _CountingModel()
    with pytest.raises(ConfigError, match="built for epochs=10, fit trains 3"):
        _fit(store_path, model, InfoBatch(64, 0.5, epochs=10), epochs=3)
    assert model.calls == 0
    _fit(store_path, model, UCB(64, 0.5), epochs=1)  # a strategy without a run length fits any


def test_make_loaders_refuses_mean_without_std(store_path):
    with pytest.raises(ConfigError, match="give mean and std together .* got mean alone"):
        make_loaders(store_path, store_path, 8, mean=(0.1, 0.2, 0.3))
    with pytest.raises(ConfigError, match="got std alone"):
        make_loaders(store_path, store_path, 8, std=(0.1, 0.2, 0.3))
    train, _ = make_loaders(store_path, store_path, 8, mean=(0.1, 0.2, 0.3), std=(0.5, 0.5, 0.5))
    assert train.transforms[-1].mean == (0.1, 0.2, 0.3)


@pytest.mark.parametrize("call, message", [
    (lambda p, t: from_arrays(np.zeros((2, 4, 4, 3), np.uint8), [0, 1], t / "a.beton", jpeg="no", progress=False),
     "jpeg must be True or False"),
    # drop_unlabeled="no" dropped the unlabelled samples; progress="no" showed bars (an API audit)
    (lambda p, t: from_arrays(np.zeros((2, 4, 4, 3), np.uint8), [0, -1], t / "a.beton", drop_unlabeled="no",
                              progress=False), "drop_unlabeled must be True or False"),
    (lambda p, t: from_arrays(np.zeros((2, 4, 4, 3), np.uint8), [0, 1], t / "a.beton", progress="no"),
     "progress must be True or False"),
    (lambda p, t: from_idx(None, t / "a.beton", progress="no"), "progress must be True or False"),
    (lambda p, t: write_dataset(t / "a.beton", [(np.zeros((4, 4, 3), np.uint8), 0)],
                                {"image": RGBImageField(), "label": IntField()}, progress="no"),
     "write_dataset: progress must be True or False"),
    (lambda p, t: Normalize((0.5,) * 3, (0.25,) * 3, channels_last="False"), "channels_last must be True or False"),
    (lambda p, t: RGBImageField(jpeg_quality=True), "jpeg_quality must be an integer"),
    (lambda p, t: RGBImageField(jpeg_quality="90"), "jpeg_quality must be an integer"),
    (lambda p, t: RGBImageField(jpeg_quality=50.5), "jpeg_quality must be an integer"),
    (lambda p, t: UCB(8, 0.5).update([0], [1.0], defer="no"), "defer must be True or False"),
    (lambda p, t: ScoreTable(8).update([0], [1.0], skip_invalid="no"), "skip_invalid must be True or False"),
    (lambda p, t: make_loaders(p, p, 8, augment="no"), "augment must be True or False"),
    (lambda p, t: _fit(p, resume="no", checkpoint=t / "c.pt"), "resume must be True or False"),
])
def test_truthy_strings_and_bools_are_not_settings(store_path, tmp_path, call, message):
    with pytest.raises(TypeError, match=message):
        call(store_path, tmp_path)
    assert not list(tmp_path.iterdir())  # nothing written


def test_from_torch_dataset_refuses_max_side_true(tmp_path):
    data = [(np.zeros((8, 8, 3), np.uint8), 0), (np.zeros((8, 8, 3), np.uint8), 1)]
    with pytest.raises(ConversionError, match="max_side must be an integer >= 1, got the bool True"):
        from_torch_dataset(data, tmp_path / "a.beton", max_side=True, progress=False)


@pytest.mark.parametrize("pair", [(0.9, 2), (1, 2.99), ("0", "2"), (True, 2)])
def test_distributed_pair_must_be_integers(store_path, pair):
    with pytest.raises(ValueError, match="needs integers"):
        Loader(store_path, 8, distributed=pair)
    with pytest.raises(ValueError, match="needs integers"):
        fastprune.PrunedSampler(UCB(64, 0.5, distributed=False), distributed=pair)
    assert Loader(store_path, 8, distributed=(np.int64(1), 2)).rank == 1


def test_strategy_distributed_one_is_not_true():
    with pytest.raises(ValueError, match="distributed must be True, False, 'auto'"):
        UCB(8, 0.5, distributed=1)


# ---- failures that used to come after training had begun ---------------------------------------

@pytest.mark.parametrize("keep, error, message", [
    (1.7, ValueError, r"keep must be in \(0, 1\], got 1.7"),
    ([0.5, 2.0], ValueError, r"keep must be in \(0, 1\], got 2.0"),
    ("0.5", TypeError, "keep must be a real number"),
])
def test_compare_checks_keep_before_any_training(store_path, tmp_path, keep, error, message):
    from fastprune.bench import compare
    with pytest.raises(error, match=message):
        compare(store_path, store_path, keep=keep, epochs=1, out=tmp_path / "r.json")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("options, message", [
    ({"seeds": (1.5,)}, "seeds must be an integer"),
    ({"seeds": "ab"}, "seeds must be a sequence of integers"),
    ({"threads": -2}, "threads must be an integer >= 1"),
    # a built model is callable, and its signature takes any keyword: it failed inside the first run
    ({"model": nn.Linear(2, 2)}, "compare\\(model=\\) takes a function that builds the model .* got a built Linear"),
])
def test_compare_checks_seeds_and_threads(store_path, options, message):
    from fastprune.bench import compare
    with pytest.raises((ValueError, TypeError), match=message):
        compare(store_path, store_path, epochs=1, **options)


@pytest.mark.parametrize("options, message", [
    ({"val_loader": "val.beton"}, "val_loader must be a Loader"),
    ({"on_epoch_end": 3}, "on_epoch_end must be callable"),
    ({"strategy": "ucb"}, "strategy must be a pruning strategy"),
])
def test_fit_checks_its_arguments_before_training(store_path, options, message):
    model = _CountingModel()
    strategy = UCB(64, keep=0.5)
    loader = Loader(store_path, 16, sampler=strategy, transforms=[NORMALIZE])
    arguments = {"val_loader": None, "strategy": strategy, **options}
    with pytest.raises(TypeError, match=message):
        fit(model, loader, arguments.pop("val_loader"), arguments.pop("strategy"), 1, progress=False, log=None,
            **arguments)
    assert model.calls == 0


# ---- messages that name the argument -----------------------------------------------------------

@pytest.mark.parametrize("epochs", [None, -3, 10**12, True])
def test_infobatch_names_epochs(epochs):
    with pytest.raises(ValueError, match=r"^epochs must be an integer"):
        InfoBatch(64, 0.5, epochs=epochs)


def test_epoch_queries_check_the_epoch(store_path):
    loader = Loader(store_path, 8)
    for query in (loader.epoch_order, loader.batches_in_epoch, loader.samples_in_epoch):
        for bad in (-1, 1.5, None, True):
            with pytest.raises((ValueError, TypeError), match="^epoch must be an integer"):
                query(bad)
    with pytest.raises(ValueError, match="^epoch must be an integer"):
        UCB(8, 0.5, warmup_epochs=1).is_full_epoch(-1)
    with pytest.raises(ValueError, match="ScoreTable.update: epoch must be an integer"):
        ScoreTable(5).update([0], [1.0], epoch=2**40)
    with pytest.raises(ValueError, match="warmup_epochs must be an integer"):
        UCB(8, 0.5, warmup_epochs=True)


def test_transforms_and_schedules_are_checked(store_path):
    assert Loader(store_path, 8, transforms=None).transforms == []
    with pytest.raises(TypeError, match="transforms\\[0\\] is the class RandomHorizontalFlip; pass an instance"):
        Loader(store_path, 8, transforms=[RandomHorizontalFlip])
    with pytest.raises(TypeError, match="transforms must be a list of transforms"):
        Loader(store_path, 8, transforms=NORMALIZE)
    with pytest.raises(TypeError, match="keep_schedule must be a sequence of kept fractions"):
        UCB(8, 0.5, keep_schedule=0.5)
    assert Loader(store_path, 8, thread_nice=np.int64(5)).thread_nice == 5


def test_torchvision_transforms_and_callables_of_another_arity_are_refused_when_the_loader_is_built(store_path):
    """The Loader calls a transform as t(images, ids, stream): torchvision's were accepted and the
    first batch failed in a loader thread ('forward() takes 2 positional arguments but 4 were given')."""
    import functools

    torchvision = pytest.importorskip("torchvision")
    from torchvision.transforms import v2

    for t in (torchvision.transforms.RandomHorizontalFlip(), torchvision.transforms.ToTensor(),
              v2.RandomHorizontalFlip(), torch.compile(torchvision.transforms.Resize(4), backend="eager")):
        name = type(getattr(t, "_orig_mod", t)).__name__  # torch.compile's wrapper is judged by what it wraps
        with pytest.raises(TypeError, match=f"transforms\\[0\\] is torchvision's {name}, which "
                                            "transforms one image or tensor.*fastprune.loader's"):
            Loader(store_path, 8, transforms=[t])

    class OneArgument(nn.Module):
        def forward(self, x):
            return x

    for t in (lambda images: images, OneArgument(), nn.Identity()):
        with pytest.raises(TypeError, match="cannot be called as t\\(images, ids, stream\\)"):
            Loader(store_path, 8, transforms=[RandomHorizontalFlip(), t])

    class OwnModule(nn.Module):  # a module of one's own taking the three arguments is a transform
        def forward(self, images, ids, stream):
            return images

    Loader(store_path, 8, transforms=[OwnModule(), functools.partial(lambda scale, images, ids, stream: images, 2),
                                      lambda images, *rest: images, torch.compile(OwnModule(), backend="eager")])


def test_a_path_that_is_no_path_is_named(store_path, tmp_path, monkeypatch):
    """pathlib's 'expected str, bytes or os.PathLike object, not list' named no argument; a
    write_dataset call with its (path, source, fields) order swapped, as the converters' is, gave it."""
    from fastprune.bench import compare
    from fastprune.prune import export_scores
    from fastprune.train import save_history

    monkeypatch.chdir(tmp_path)
    data = [(np.zeros((4, 4, 3), np.uint8), 0)]
    for call, message in [
        (lambda: write_dataset(data, "w.beton", {"image": RGBImageField(), "label": IntField()}),
         r"write_dataset\(path, source, fields\): path must be a file path \(str or os.PathLike\), got list$"),
        (lambda: Store(None), "Store: path must be a file path .*, got NoneType None"),
        (lambda: from_arrays(np.zeros((2, 4, 4, 3), np.uint8), [0, 1], None), "output must be a file path"),
        (lambda: export_scores(UCB(4), 3), "export_scores: path must be a file path .*, got int 3"),
        (lambda: save_history(None, []), "save_history: path must be a file path"),
        (lambda: compare(store_path, store_path, out=123, epochs=1), r"compare\(\): out must be a file path"),
    ]:
        with pytest.raises(TypeError, match=message):
            call()
    assert not list(tmp_path.iterdir())


def test_numpy_and_zero_dim_numbers_are_accepted(store_path, tmp_path):
    normalize = Normalize(torch.tensor([0.5, 0.5, 0.5]), np.array([0.25, 0.25, 0.25]))
    assert normalize.mean == (0.5, 0.5, 0.5)
    normalize = Normalize(torch.tensor([0.5, 0.5, 0.5]).view(3, 1, 1), torch.full((3, 1, 1), 0.25))  # torchvision's shape
    assert normalize.std == (0.25, 0.25, 0.25)
    assert RandomHorizontalFlip(torch.tensor([0.25])).p == 0.25
    with pytest.raises(TypeError, match="must be a real number"):
        Normalize(torch.tensor([0.5, 0.5, 0.5]), [torch.tensor([True]), 0.25, 0.25])
    images = np.zeros((2, 4, 4, 3), np.uint8)
    from fastprune.convert._common import check_positive_option  # from_image_folder's max_pixels
    assert check_positive_option(np.int64(1000), "max_pixels") == 1000
    assert Store(from_arrays(images, [0, 1], tmp_path / "q.beton", jpeg=np.bool_(True), quality=np.int64(80),
                             progress=False)).num_samples == 2


def test_kept_grid_checks_its_counts(store_path, tmp_path):
    pytest.importorskip("matplotlib")
    from fastprune.prune.report import kept_grid
    for name, bad in (("per_class", 0), ("per_class", 2.5), ("max_classes", 0)):
        with pytest.raises((ValueError, TypeError), match=f"kept_grid: {name}"):
            kept_grid(UCB(64, 0.5), store_path, tmp_path / "g.png", **{name: bad})


def test_a_second_fit_with_the_same_strategy_is_refused(store_path):
    """A notebook cell run again started fit at epoch 0 with a strategy standing at the old run's
    epoch: epoch 1 reused that run's cached subset, and nothing said so."""
    strategy = UCB(64, keep=0.5, epochs=2)
    _fit(store_path, strategy=strategy, epochs=2)
    model = _CountingModel()
    with pytest.raises(ConfigError, match="has already selected epoch 1 .* build a new strategy"):
        _fit(store_path, model, strategy=strategy, epochs=2)
    assert model.calls == 0
    interrupted = UCB(64, keep=0.5, epochs=2)  # scores from an epoch 0 that was stopped midway
    interrupted.select(0)
    interrupted.update(np.arange(8), np.ones(8))
    with pytest.warns(RuntimeWarning, match="already holds scores"):
        _fit(store_path, strategy=interrupted, epochs=2)


def test_the_never_prunes_warning_points_at_the_callers_line():
    for build in (lambda: EL2N(64, 0.5, epochs=2), lambda: UCB(64, 0.5, warmup_epochs=2, epochs=2)):
        with pytest.warns(RuntimeWarning, match="never prunes") as caught:
            build()
        assert caught[0].filename == __file__


def test_signals_deferred_holds_a_signal_another_thread_receives(ctrl_c_raises):
    """The mask alone blocked the calling thread only: a signal taken by another thread ran its
    Python handler in the main thread inside the block."""
    import os
    import signal
    import threading
    import time

    from fastprune._signals import signals_deferred

    events = []
    with pytest.raises(KeyboardInterrupt):
        with signals_deferred():
            thread = threading.Thread(target=lambda: os.kill(os.getpid(), signal.SIGINT))
            thread.start()
            thread.join()
            time.sleep(0.1)  # a handler would have run by now
            events.append("block done")
    assert events == ["block done"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_settings_are_fixed_at_construction():
    """strategy.keep = 0.2 after construction was ignored by the selection, while repr, config()
    and a checkpoint said 0.2; UCB's c likewise, and eps = 2.0 failed later in a native call."""
    from fastprune.prune import EpsilonGreedy
    strategy = UCB(100, keep=0.5, c=1.0)
    for name, value in (("keep", 0.2), ("c", 5.0), ("epochs", 3), ("seed", 1)):
        with pytest.raises(AttributeError, match=f"UCB.{name} is fixed at construction"):
            setattr(strategy, name, value)
    with pytest.raises(AttributeError, match="EpsilonGreedy.eps is fixed"):
        EpsilonGreedy(100, eps=0.1).eps = 2.0
    assert strategy.keep == 0.5 and strategy.num_selected(1) == 50 and "keep=0.5" in repr(strategy)


def test_a_subclass_may_set_a_setting_to_its_value_before_the_constructor():
    class Mine(UCB):
        def __init__(self, n):
            self.keep = 0.4  # the same value the constructor then sets
            super().__init__(n, keep=0.4)

    assert Mine(100).num_selected(1) == 40
