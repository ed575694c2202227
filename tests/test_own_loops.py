"""fastprune in a loop of the user's own (an audit of 2026-12-07): numpy-typed settings, a default
device other than the CPU, a strategy class where a sampler goes, weights given
with a low-precision loss, a missing checkpoint entry, and the score reports of a loop's own files."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

import fastprune
from fastprune.cli import main
from fastprune.convert import from_arrays
from fastprune.loader import Normalize
from fastprune.prune import export_scores


@pytest.mark.parametrize("make", [
    lambda: fastprune.UCB(50, keep=0.5, decay=np.float32(0.8)),
    lambda: fastprune.InfoBatch(50, keep=np.float64(0.3), epochs=4),
])
def test_numpy_settings_give_a_state_that_loads_with_weights_only(make, tmp_path):
    """decay and InfoBatch's keep were kept as numpy scalars, which torch.load(weights_only=True)
    refuses: fit called its own checkpoint damaged and the guide's resume recipe failed."""
    strategy = make()
    strategy.update(np.arange(50), np.linspace(0, 1, 50, dtype=np.float32))
    torch.save(strategy.state_dict(), tmp_path / "s.pt")
    again = make()
    again.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    np.testing.assert_array_equal(again.select(1).indices, strategy.select(1).indices)


def test_normalize_and_a_loader_work_under_another_default_device(tmp_path):
    """Normalize built its lookup table with torch.arange and no device, then called .numpy() on
    it: under torch.set_default_device("cuda") (meta stands in here) it failed deep inside."""
    store = from_arrays(np.arange(4 * 8 * 8 * 3, dtype=np.uint8).reshape(4, 8, 8, 3), np.arange(4) % 2,
                        tmp_path / "s.beton", progress=False)
    expected = next(iter(fastprune.Loader(store, 4, shuffle=False, transforms=[Normalize([0.5] * 3, [0.25] * 3)])))
    torch.set_default_device("meta")
    try:
        normalize = Normalize([0.5] * 3, [0.25] * 3)
        batch = next(iter(fastprune.Loader(store, 4, shuffle=False, transforms=[normalize])))
    finally:
        torch.set_default_device(None)
    assert batch.images.device.type == "cpu"
    torch.testing.assert_close(batch.images, expected.images, rtol=0, atol=0)


def test_a_strategy_class_where_a_sampler_goes_and_a_missing_state_are_one_line(tmp_path):
    store = from_arrays(np.zeros((4, 8, 8, 3), np.uint8), np.arange(4) % 2, tmp_path / "s.beton", progress=False)
    with pytest.raises(TypeError, match=r"^sampler must be a strategy, not the class: UCB\(len\(store\)"):
        fastprune.Loader(store, 2, sampler=fastprune.UCB)  # failed at the first pass on a missing 'epoch'
    with pytest.raises(TypeError, match=r"^UCB.load_state_dict takes the dict state_dict\(\) returned, got NoneType"):
        fastprune.UCB(4).load_state_dict({"model": {}}.get("strategy"))  # was AttributeError: 'NoneType'...get


def test_weights_given_with_a_bfloat16_loss_are_not_rounded_to_it():
    """Given weights were cast to the loss's dtype (InfoBatch's 9.94 became 9.9375 in bf16); the
    weights looked up by id were float32, so the two documented forms gave different losses."""
    strategy = fastprune.InfoBatch(1000, keep=0.4, epochs=3, seed=0)
    strategy.select(0)
    strategy.update(np.arange(1000), np.random.default_rng(0).random(1000).astype(np.float32))
    selection = strategy.select(1)
    assert len(np.unique(selection.weights)) > 1  # the above-mean samples and the reweighted others
    ids, weights = torch.from_numpy(selection.indices), torch.from_numpy(selection.weights)
    losses = torch.from_numpy(np.random.default_rng(1).random(len(ids)).astype(np.float32)).bfloat16()
    given, looked_up = strategy.weighted_loss(ids, losses, weights), strategy.weighted_loss(ids, losses)
    exact = (losses.double() * weights.double()).mean()
    assert given.dtype == looked_up.dtype == torch.float32
    assert float(given) == pytest.approx(float(looked_up), rel=1e-6)
    assert float(given) == pytest.approx(float(exact), rel=1e-5)


def _scored_shards(tmp_path, save):
    """A 2-rank sharded UCB run of one epoch, each rank's state saved by ``save(rank, state)``;
    returns the report merged from the strategies themselves."""
    strategies = []
    for rank in range(2):
        strategy = fastprune.UCB(100, keep=0.5, seed=0, distributed=("sharded", rank, 2))
        chosen = strategy.select(0).indices
        strategy.update(chosen, (chosen % 7).astype(np.float32))
        save(rank, strategy.state_dict())
        strategies.append(strategy)
    export_scores(strategies, tmp_path / "expected.csv")
    return (tmp_path / "expected.csv").read_text()


@pytest.mark.parametrize("layout", ["state_dict", "own_checkpoint"])
def test_scores_merge_the_files_a_loop_of_ones_own_saves(tmp_path, capsys, layout):
    """The guide's sharded loop saves each rank's state_dict(), and its resume recipe a dict
    holding one; `fastprune scores` read only fit's checkpoints and called both 'a checkpoint this
    version cannot resume' (a docs audit)."""
    def save(rank, state):
        torch.save(state if layout == "state_dict" else {"strategy": state, "next_epoch": 1, "model": {}},
                   tmp_path / f"rank{rank}.pt")

    expected = _scored_shards(tmp_path, save)
    ranks = [str(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    assert main(["scores", *ranks, "--out", str(tmp_path / "merged.csv")]) == 0, capsys.readouterr().err
    assert (tmp_path / "merged.csv").read_text() == expected
    rows = list(csv.DictReader(open(tmp_path / "merged.csv")))
    assert [int(row["index"]) for row in rows] == list(range(100))


def test_scores_refuse_a_file_holding_no_strategy_or_two_in_one_line(tmp_path, capsys):
    state = fastprune.UCB(10).state_dict()
    torch.save({"model": {"w": torch.zeros(2)}}, tmp_path / "model.pt")
    torch.save({"a": state, "b": state}, tmp_path / "two.pt")
    assert main(["scores", str(tmp_path / "model.pt")]) == 1
    assert capsys.readouterr().err == (f"fastprune scores: error: {tmp_path / 'model.pt'}: holds no fastprune "
                                       "strategy state: expected fastprune train's (fit's) checkpoint, a strategy's "
                                       "state_dict() saved with torch.save, or a dict holding one\n")
    assert main(["scores", str(tmp_path / "two.pt")]) == 1
    assert "holds 2 strategies' states (under 'a', 'b'): give one" in capsys.readouterr().err
    for held in ({}, {"strategy": state}):  # fit's of another version, with its strategy too: refused as before
        torch.save({"format": "fastprune-checkpoint-99", **held}, tmp_path / "newer.pt")
        assert main(["scores", str(tmp_path / "newer.pt")]) == 1
        assert "a newer fastprune wrote it" in capsys.readouterr().err


def test_scores_of_two_separate_runs_say_they_are_merged_as_shards(tmp_path, capsys):
    for name in ("a", "b"):
        torch.save(fastprune.UCB(10, seed=0).state_dict(), tmp_path / f"{name}.pt")
    assert main(["scores", str(tmp_path / "a.pt"), str(tmp_path / "b.pt")]) == 1
    assert ("sample 0 is in more than one of the reports, which are merged as the shards of one sharded run: two "
            "separate runs (export each on its own)") in capsys.readouterr().err


def test_a_store_given_as_a_checkpoint_and_a_checkpoint_given_as_a_store_say_what_they_are(tmp_path, capsys):
    """'Unsupported operand 2' and 'format version 19280 (... an ffcv .beton file?)' (a train audit)."""
    store = from_arrays(np.zeros((4, 8, 8, 3), np.uint8), np.arange(4) % 2, tmp_path / "s.beton", progress=False)
    torch.save(fastprune.UCB(4).state_dict(), tmp_path / "run.pt")
    assert main(["scores", str(store)]) == 1
    assert capsys.readouterr().err == f"fastprune scores: error: {store}: a store, not a checkpoint: give the " \
                                      "checkpoint (--checkpoint's file)\n"
    with pytest.raises(fastprune.StoreError, match=r"not a store: a zip archive \(a torch checkpoint, .pt\?\)"):
        fastprune.Store(tmp_path / "run.pt")
