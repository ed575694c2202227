"""What a rank holds per sample at scale (issue 36): half-precision score tables
(``score_dtype``), no kept counters (``track_kept=False``), and reports of sharded checkpoints
(one shard each, merged into one report of every sample)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

import fastprune
from fastprune.cli import main
from fastprune.convert import from_arrays
from fastprune.prune import EpsilonGreedy, UCB
from fastprune.prune.report import merge_reports, report_from_state, report_of

N, SEED = 203, 5


def _train(strategy, epochs=4, seed=0):
    """Epochs of select + update with losses that depend on the sample id (so ranks agree)."""
    for epoch in range(epochs):
        ids = strategy.select(epoch).indices
        losses = (np.sin(ids * 0.37 + epoch) + 1.5 + 0.01 * seed).astype(np.float32)
        strategy.update(ids, losses, losses < 1.2)


@pytest.mark.parametrize("cls,full,compact", [(EpsilonGreedy, 12, 8), (UCB, 16, 10)])
def test_bytes_per_sample_of_each_setting(cls, full, compact):
    """The memory the options save, counted from the arrays the strategy really allocates
    (correctness fields are allocated at the first update that passes `correct`)."""
    assert cls(N).bytes_per_sample == full + 8
    assert cls(N, track_kept=False).bytes_per_sample == full
    for dtype in ("float16", "bfloat16"):
        strategy = cls(N, score_dtype=dtype, track_kept=False)
        assert strategy.bytes_per_sample == compact
        assert sum(a.nbytes for a in strategy.table._arrays.values()) == compact * N
    with pytest.raises(ValueError, match="float32"):
        cls(N, score_dtype="float64")


def test_without_kept_counters_selections_are_the_same_and_nothing_is_counted():
    counted, bare = UCB(N, keep=0.3, seed=SEED), UCB(N, keep=0.3, seed=SEED, track_kept=False)
    for epoch in range(4):
        a, b = counted.select(epoch), bare.select(epoch)
        np.testing.assert_array_equal(a.indices, b.indices)
        losses = (a.indices % 7).astype(np.float32)
        counted.update(a.indices, losses)
        bare.update(b.indices, losses)
    with pytest.raises(AttributeError, match="track_kept=False"):
        bare.times_kept
    report = bare.sample_report()
    assert list(report) == ["index", "score", "loss", "seen"]
    np.testing.assert_array_equal(report["score"], counted.sample_report()["score"])
    state = bare.state_dict()
    assert state["kept"] is None and state["config"]["track_kept"] is False
    assert list(report_from_state(state)) == list(report)
    restored = UCB(N, keep=0.3, seed=SEED, track_kept=False)
    restored.load_state_dict(state)
    with pytest.raises(ValueError, match="track_kept"):  # a setting a resume must agree with
        UCB(N, keep=0.3, seed=SEED).load_state_dict(state)
    with pytest.raises(TypeError, match="track_kept"):
        UCB(N, track_kept="no")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_tables_select_like_float32_on_well_separated_scores_and_resume_exactly(dtype):
    """Scores 0.05 apart survive 2-byte rounding, so the selections must be the same as float32's;
    a checkpoint of a half table resumes bit for bit and records its dtype."""
    full, half = EpsilonGreedy(N, keep=0.4, seed=SEED), EpsilonGreedy(N, keep=0.4, seed=SEED, score_dtype=dtype)
    for epoch in range(5):
        a, b = full.select(epoch), half.select(epoch)
        np.testing.assert_array_equal(a.indices, b.indices, err_msg=f"epoch {epoch}")
        losses = (1.0 + 0.05 * (a.indices % 40)).astype(np.float32)  # 0.05 apart: still distinct after rounding
        full.update(a.indices, losses)
        half.update(b.indices, losses)
    assert half.table.score.dtype == np.float32 and half.table.dtype == dtype
    state = half.state_dict()
    assert state["config"]["score_dtype"] == dtype
    live, saved = half.sample_report(), report_from_state(state)
    for name in live:
        np.testing.assert_array_equal(live[name], saved[name], err_msg=name)
    buffer = __import__("io").BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    resumed = EpsilonGreedy(N, keep=0.4, seed=SEED, score_dtype=dtype)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    np.testing.assert_array_equal(resumed.table.score, half.table.score)
    np.testing.assert_array_equal(resumed.select(5).indices, half.select(5).indices)
    with pytest.raises(ValueError, match="score_dtype"):  # another precision would select differently
        EpsilonGreedy(N, keep=0.4, seed=SEED).load_state_dict(state)


def _shards(world=3, **options):
    strategies = [UCB(N, keep=0.4, seed=SEED, distributed=("sharded", r, world), **options) for r in range(world)]
    for strategy in strategies:
        _train(strategy)
    return strategies


@pytest.mark.parametrize("options", [{}, {"score_dtype": "bfloat16", "track_kept": False}])
def test_a_sharded_checkpoints_report_names_its_samples_and_shards_merge_into_one(options):
    strategies = _shards(**options)
    reports = []
    for strategy in strategies:
        live, saved = strategy.sample_report(), report_from_state(strategy.state_dict())
        for name in live:
            np.testing.assert_array_equal(live[name], saved[name], err_msg=name)
        assert len(saved["index"]) == strategy.table.num_samples < N
        reports.append(saved)
    merged = merge_reports(reports)
    np.testing.assert_array_equal(merged["index"], np.arange(N))
    for report in reports:  # each sample's row is its shard's row
        rows = report["index"]
        for name in report:
            np.testing.assert_array_equal(merged[name][rows], report[name], err_msg=name)
    merged_states = report_of([s.state_dict() for s in reversed(strategies)])
    for name in merged:
        np.testing.assert_array_equal(merged_states[name], merged[name], err_msg=name)
    with pytest.raises(fastprune.ConfigError, match="more than one of the reports"):
        merge_reports([reports[0], reports[1], reports[0]])


def test_an_older_sharded_state_without_its_shard_record_is_refused_in_one_line():
    state = _shards(world=2)[1].state_dict()
    del state["shard"]
    with pytest.raises(fastprune.ConfigError, match="shard record") as caught:
        report_from_state(state)
    assert "\n" not in str(caught.value)


def test_scores_command_merges_a_sharded_runs_checkpoints_with_labels(tmp_path, capsys):
    from fastprune.train.checkpoints import save_checkpoint

    rng = np.random.default_rng(0)
    store = from_arrays(rng.integers(0, 256, (N, 4, 4, 3), np.uint8), np.arange(N) % 3, tmp_path / "t.beton",
                        progress=False, class_names=["a", "b", "c"])
    paths = []
    for strategy in _shards(world=2):
        model = torch.nn.Linear(2, 2)
        path = tmp_path / f"rank{strategy.shard_rank}.pt"
        save_checkpoint(path, model, torch.optim.SGD(model.parameters(), lr=0.1), None, strategy, None,
                        [{"epoch": e} for e in range(4)])
        paths.append(str(path))
    assert main(["scores", *paths, "--store", str(store), "--out", str(tmp_path / "all.csv")]) == 0
    assert f"{N} samples" in capsys.readouterr().out
    rows = list(csv.DictReader(open(tmp_path / "all.csv")))
    assert [int(r["index"]) for r in rows] == list(range(N))
    assert [int(r["label"]) for r in rows] == (np.arange(N) % 3).tolist()
    assert sum(int(r["times_kept"]) for r in rows) == sum(int(s.times_kept.sum()) for s in _shards(world=2))
    # one shard alone, with the store: labels of its own samples
    assert main(["scores", paths[1], "--store", str(store), "--out", str(tmp_path / "one.npz")]) == 0
    with np.load(tmp_path / "one.npz") as one:
        np.testing.assert_array_equal(one["label"], one["index"] % 3)
    pytest.importorskip("matplotlib")
    assert main(["scores", paths[1], "--store", str(store), "--grid", str(tmp_path / "g.png")]) == 0
    assert (tmp_path / "g.png").stat().st_size > 1000
