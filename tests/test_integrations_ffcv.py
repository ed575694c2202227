"""PrunedOrder with the real ffcv 1.0.2 Loader on a .beton written by ffcv's own DatasetWriter."""

import numpy as np
import pytest

ffcv = pytest.importorskip("ffcv")
from ffcv.fields import FloatField, IntField  # noqa: E402
from ffcv.fields.decoders import FloatDecoder, IntDecoder  # noqa: E402
from ffcv.loader import Loader  # noqa: E402
from ffcv.writer import DatasetWriter  # noqa: E402

from fastprune.integrations.ffcv import PrunedOrder  # noqa: E402
from fastprune.prune import UCB, UniformRandom  # noqa: E402

pytestmark = pytest.mark.ffcv
N, BATCH = 103, 10


class Pairs:
    def __len__(self):
        return N

    def __getitem__(self, i):
        return i, float(i) * 0.5


@pytest.fixture(scope="module")
def beton(tmp_path_factory):
    path = tmp_path_factory.mktemp("ffcv") / "pairs.beton"
    DatasetWriter(str(path), {"index": IntField(), "value": FloatField()}, num_workers=1).from_indexed_dataset(Pairs())
    return path


def make_loader(beton, strategy):
    order = PrunedOrder.register(strategy)
    loader = Loader(str(beton), batch_size=BATCH, num_workers=1, order=order, drop_last=False, seed=3,
                    pipelines={"index": [IntDecoder()], "value": [FloatDecoder()]})
    return loader, order


def test_epochs_follow_the_strategy_and_batch_counts_follow_the_subset(beton):
    strategy = UniformRandom(N, 0.3, warmup_epochs=1, final_full_epochs=1, epochs=4, seed=7)
    loader, order = make_loader(beton, strategy)
    expected_sizes = [N, 31, 31, N]
    for epoch, size in enumerate(expected_sizes):
        seen, batches = [], 0
        for index, value in loader:
            batches += 1
            ids = np.asarray(index).reshape(-1)
            np.testing.assert_allclose(np.asarray(value).reshape(-1), ids * 0.5)  # rows belong to ids
            seen.extend(ids.tolist())
        assert batches == -(-size // BATCH) == order.num_batches(epoch, BATCH) == len(loader)
        assert sorted(seen) == sorted(strategy.select(epoch).indices.tolist())  # exactly the subset


def test_updates_and_weights_drive_the_next_epoch(beton):
    strategy = UCB(N, 0.2, seed=1, warmup_epochs=1)
    loader, order = make_loader(beton, strategy)
    for index, value in loader:  # epoch 0 (full): loss = value, so the largest ids score highest
        ids = np.asarray(index).reshape(-1)
        assert np.all(order.weights(ids) == 1.0)
        strategy.update(ids, np.asarray(value).reshape(-1))
    got = sorted(np.asarray(i).reshape(-1)[0] for batch in loader for i in batch[0])
    assert got == list(range(N - 21, N))  # top 21 (= round(0.2 * 103)) by loss


def test_a_new_ffcv_loader_over_a_trained_strategy_warns_unless_its_next_epoch_is_set(beton):
    """An ffcv Loader built each epoch, or over a loaded checkpoint, starts at epoch 0 and replayed
    the subsets chosen before, silently. Building one draws epoch 0's order (for len()): only a
    pass is checked."""
    import warnings

    from fastprune.errors import UsageWarning

    def epoch(loader, strategy):
        for index, value in loader:
            strategy.update(np.asarray(index).reshape(-1), np.asarray(value).reshape(-1))

    strategy = UCB(N, 0.5, seed=1, warmup_epochs=0)
    epoch(make_loader(beton, strategy)[0], strategy)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again, _ = make_loader(beton, strategy)  # built: no pass yet, no warning
    with pytest.warns(UsageWarning, match=r"ffcv Loader: this pass runs epoch 0 again .*unless loader.next_epoch is set"):
        epoch(again, strategy)
    state = strategy.state_dict()
    resumed = UCB(N, 0.5, seed=1, warmup_epochs=0)
    resumed.load_state_dict(state)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loader, _ = make_loader(beton, resumed)
        loader.next_epoch = 1
        epoch(loader, resumed)
    assert resumed.current_epoch == 1


def test_indices_other_than_the_first_n_samples_are_refused(beton):
    """Loader(indices=reversed) with the docstring's loop: the strategy counted positions in
    `indices`, batches reported store ids, and epoch 1 kept the 30 lowest losses instead of the
    highest. The first n samples (positions = ids) still work."""
    for indices in (np.arange(N)[::-1].copy(), np.arange(1, N)):
        order = PrunedOrder.register(UCB(len(indices), 0.5))
        with pytest.raises(ValueError, match="PrunedOrder needs the Loader's indices to be 0..n-1"):
            Loader(str(beton), batch_size=BATCH, num_workers=1, order=order, indices=indices,
                   pipelines={"index": [IntDecoder()], "value": [FloatDecoder()]})
    first = PrunedOrder.register(UCB(60, 0.5, warmup_epochs=1))
    loader = Loader(str(beton), batch_size=BATCH, num_workers=1, order=first, indices=np.arange(60),
                    pipelines={"index": [IntDecoder()], "value": [FloatDecoder()]})
    for index, value in loader:
        first.strategy.update(np.asarray(index).reshape(-1), np.asarray(value).reshape(-1))
    kept = sorted(int(i) for index, _ in loader for i in np.asarray(index).reshape(-1))
    assert kept == list(range(30, 60))  # the highest losses of the first 60


def test_register_is_required(beton):
    with pytest.raises(TypeError, match="register"):
        PrunedOrder(object())


def docstring_example() -> str:
    """The indented code block of fastprune.integrations.ffcv's docstring, dedented."""
    import textwrap

    import fastprune.integrations.ffcv as module

    lines = module.__doc__.splitlines()[2:]
    block = lines[:next(i for i, line in enumerate(lines) if line and not line.startswith("    "))]
    return textwrap.dedent("\n".join(block))


def test_docstring_loop_runs_verbatim_on_a_store_converted_with_an_index_field(tmp_path):
    """The docstring's loop, exactly as written, on a fastprune store (from_arrays(index=True))
    read by ffcv's own Loader: it unpacks (x, y, index), prunes, and the model learns."""
    import torch

    from fastprune.convert import from_arrays

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 4096)
    images = rng.integers(0, 192, (4096, 8, 8, 3), dtype=np.uint8)
    images[..., 0] += (64 * labels[:, None, None]).astype(np.uint8)  # class 1 is redder
    path = str(from_arrays(images, labels, tmp_path / "toy.beton", progress=False, index=True))
    torch.manual_seed(0)
    # BatchNorm2d first: the loop hands the model 0..255 values
    model = torch.nn.Sequential(torch.nn.BatchNorm2d(3), torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
    namespace = dict(path=path, num_samples=4096, epochs=3, model=model,
                     criterion=torch.nn.CrossEntropyLoss(reduction="none"),
                     optimizer=torch.optim.SGD(model.parameters(), lr=0.05))
    exec(compile(docstring_example(), "fastprune.integrations.ffcv docstring", "exec"), namespace)
    strategy = namespace["strategy"]
    assert strategy.num_selected(2) == 2048  # pruned: the loop ran on UCB's half
    model.eval()
    with torch.no_grad():
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
        accuracy = (model(x).argmax(1).numpy() == labels).mean()
    assert accuracy >= 0.9, accuracy


def test_the_order_follows_the_strategys_seed_not_ffcvs_random_one(beton):
    """ffcv replaces Loader(seed=None) by a random seed: two ranks (or two runs) would shuffle
    differently, and a distributed run's shards would overlap."""
    def first_epoch(strategy, **options):
        order = PrunedOrder.register(strategy, **options)
        loader = Loader(str(beton), batch_size=BATCH, num_workers=1, order=order, drop_last=False,
                        pipelines={"index": [IntDecoder()], "value": [FloatDecoder()]})  # no seed
        return [int(i) for batch in loader for i in np.asarray(batch[0]).reshape(-1)]

    runs = [first_epoch(UniformRandom(N, 0.5, seed=4)) for _ in range(2)]
    assert runs[0] == runs[1] and sorted(runs[0]) != runs[0]  # shuffled, alike
    assert first_epoch(UniformRandom(N, 0.5, seed=4), seed=9) != runs[0]


def test_a_loader_yielding_fields_in_another_order_than_its_pipelines_warns_at_the_users_line(beton):
    """ffcv yields the store's field order: with pipelines {'value', 'index'} over a store written as
    (index, value), a loop unpacking (value, index) took values for sample ids, silently."""
    import warnings

    from fastprune.errors import UsageWarning

    order = PrunedOrder.register(UCB(N, keep=0.5, seed=0))
    with pytest.warns(UsageWarning, match=r"yields \(index, value\) per batch, the store's field order, not the "
                                          r"pipelines' \(value, index\)") as caught:
        loader = Loader(str(beton), batch_size=BATCH, num_workers=1, order=order, drop_last=False,
                        pipelines={"value": [FloatDecoder()], "index": [IntDecoder()]})
    assert caught[0].filename == __file__
    first, second = next(iter(loader))
    assert first.dtype.kind == "i" and second.dtype.kind == "f"  # what the warning says: index first
    with warnings.catch_warnings():
        warnings.simplefilter("error", UsageWarning)
        make_loader(beton, UCB(N, keep=0.5, seed=0))  # the store's order: silent


def test_pipelines_naming_a_field_the_store_lacks_are_refused_naming_it(beton):
    order = PrunedOrder.register(UCB(N, keep=0.5, seed=0))
    with pytest.raises(ValueError, match=r"pairs.beton: the Loader's pipelines name 'label', which the store does not "
                                         r"hold \(its fields: index, value\)$"):  # ffcv: a bare AssertionError
        Loader(str(beton), batch_size=BATCH, num_workers=1, order=order,
               pipelines={"label": [IntDecoder()], "index": [IntDecoder()], "value": None})
