"""Store files that fastprune opens itself are closed when it is done with them, never left to the
garbage collector. CPython closes a forgotten file in a finalizer that swallows exceptions, and its
ResourceWarning calls repr(), which runs pending signal handlers: a Ctrl-C that landed there was
lost, and `fastprune train` trained its 50 epochs and exited 0 (5 runs in 360 under load, where
the retried Ctrl-C of test_signals_in_imports met the files describe_stores left behind)."""

import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

from fastprune.convert import from_arrays


def _left_to_the_collector(call) -> list[str]:
    """The ResourceWarnings (files, mappings) raised while ``call`` runs, finalizers included."""
    import gc

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        call()
        gc.collect()
    return [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("closed") / "s.beton"
    return from_arrays(rng.integers(0, 256, (96, 8, 8, 3), dtype=np.uint8), np.arange(96) % 4, path, progress=False)


def test_describing_stores_and_the_recipes_checks_close_what_they_open(store):
    from fastprune.train.data import describe_stores
    from fastprune.train.recipe import RECIPE, make_loaders, recipe_warnings

    assert _left_to_the_collector(lambda: describe_stores(store, store)) == []
    assert _left_to_the_collector(lambda: recipe_warnings(RECIPE, store, 0.5)) == []
    loaders = []  # the loaders hold their own files while they live; the statistics' file is closed
    assert _left_to_the_collector(lambda: loaders.extend(make_loaders(str(store), str(store), 32))) == []
    assert [len(loader) for loader in loaders] == [3, 1]


def test_a_source_that_fails_to_open_closes_its_file(store):
    from fastprune.loader._source import open_source

    def bad_field():
        with pytest.raises(ValueError, match="image_field='nope'"):
            open_source(store, "nope", None, threads=1)

    assert _left_to_the_collector(bad_field) == []


def test_a_source_closes_only_a_store_it_opened(store):
    from fastprune.loader._source import open_source
    from fastprune.store.reader import Store

    with Store(store) as given:
        with open_source(given, None, None, threads=1) as source:
            assert source.num_samples == 96
        assert given.check_unchanged() is None  # the caller's store stays open
    with open_source(store, None, None, threads=1) as source:
        pass
    from fastprune.errors import StoreError

    with pytest.raises(StoreError, match="the store is closed"):
        source.owner.check_unchanged()


def test_scores_with_the_store_close_it(store, tmp_path):
    import fastprune
    from fastprune.prune.report import export_scores, kept_grid

    strategy = fastprune.EpsilonGreedy(96, keep=0.5, seed=0)
    rng = np.random.default_rng(0)
    for epoch in range(2):
        selection = strategy.select(epoch)
        losses = rng.random(len(selection)).astype(np.float32)
        strategy.update(selection.indices, losses, losses < 0.5)
    assert _left_to_the_collector(lambda: export_scores(strategy, tmp_path / "s.csv", store=store)) == []
    pytest.importorskip("matplotlib")
    assert _left_to_the_collector(lambda: kept_grid(strategy, store, tmp_path / "g.png", per_class=2)) == []


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_commands_leave_no_store_file_to_the_garbage_collector(store, tmp_path):
    """`info`, `train` (the run the Ctrl-C was lost in) and `scores`, with every ResourceWarning shown."""
    (tmp_path / "tiny.py").write_text(textwrap.dedent("""
        def make(num_classes):
            import torch
            return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, num_classes))
    """))
    fastprune = [sys.executable, "-W", "always::ResourceWarning", "-m", "fastprune"]
    commands = [
        ["info", str(store), "--verify"],
        ["train", "--train", str(store), "--val", str(store), "--model", "tiny:make", "--epochs", "2",
         "--batch-size", "16", "--threads", "1", "--no-progress", "--checkpoint", "run.pt"],
        ["scores", "run.pt", "--store", str(store), "--out", "s.csv"],
    ]
    for command in commands:
        result = subprocess.run(fastprune + command, cwd=tmp_path, capture_output=True, text=True, timeout=240)
        assert result.returncode == 0, (command[0], result.stderr[-2000:])
        assert "ResourceWarning" not in result.stderr, (command[0], result.stderr[-2000:])


def test_a_loader_closes_the_store_it_opened_and_then_refuses_a_pass(store):
    import pickle

    from fastprune import Loader
    from fastprune.errors import StoreError
    from fastprune.store.reader import Store

    def read_in_a_block():
        with Loader(store, 32, seed=0) as loader:
            assert sum(len(batch.indices) for batch in loader) == 96
        with pytest.raises(StoreError, match="the store is closed"):
            next(iter(loader))

    assert _left_to_the_collector(read_in_a_block) == []
    with Store(store) as given:
        with Loader(given, 32) as loader:
            pass
        assert given.check_unchanged() is None  # the caller's store stays open
    copy = pickle.loads(pickle.dumps(Loader(store, 32)))  # a spawned DataLoader worker's copy closes its own
    assert _left_to_the_collector(copy.close) == []
    with pytest.raises(StoreError, match="the store is closed"):
        next(iter(copy))
