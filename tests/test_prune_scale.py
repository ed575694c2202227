"""benchmarks/scale.py --tiny runs every part and its numbers agree with hand-computed oracles."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def scale():
    spec = importlib.util.spec_from_file_location("scale_benchmark", ROOT / "benchmarks" / "scale.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny(scale, tmp_path_factory, fashion_mnist_dir):
    out = tmp_path_factory.mktemp("scale") / "scale.json"
    scale.main(["--tiny", "--out", str(out)])
    return json.loads(out.read_text()), out


def test_tiny_run_writes_json_and_markdown_with_the_machine(tiny):
    result, out = tiny
    assert result["benchmark"] == "scale" and result["machine"]["cores"] >= 1
    for key in ("memory", "selection", "communication", "overlap", "precision", "compact", "precision_replay",
                "extrapolation"):
        assert result[key], key
    text = out.with_suffix(".md").read_text()
    assert "EXTRAPOLATION (not measured)" in text and "| fashion_mnist |" in text
    assert "closed loop" in text and "| bfloat16 | False | 8 |" in text


def test_table_bytes_are_the_strategies_fields(tiny):
    per_sample = {"epsilon_greedy": 12, "ucb": 16, "infobatch": 8}  # mean+seen (+score) (+var)
    for row in tiny[0]["memory"]:
        assert row["table_bytes_counted"] == per_sample[row["strategy"]] * row["entries"], row
        assert row["kept_counter_bytes"] == 8 * row["entries"]  # times kept (uint32), last kept epoch (int32)
        if row["mode"] == "sharded":
            assert row["entries"] == -(-row["num_samples"] // row["world"])  # rank 0's shard
    assert {r["strategy"] for r in tiny[0]["memory"] if r["mode"] == "sharded"} == {"epsilon_greedy", "ucb"}


def test_compact_settings_hold_what_their_fields_take(tiny):
    """score_dtype halves the float fields (mean, score; UCB's var too); track_kept adds 8 B."""
    floats = {"epsilon_greedy": 2, "ucb": 3}  # float fields; seen (int32) is the one other field
    rows = tiny[0]["compact"]
    assert {(r["score_dtype"], r["track_kept"]) for r in rows} == {
        ("float32", True), ("float32", False), ("bfloat16", True), ("bfloat16", False), ("float16", False)}
    for row in rows:
        width = 4 if row["score_dtype"] == "float32" else 2
        table = floats[row["strategy"]] * width + 4
        assert row["table_bytes_counted"] == table * row["entries"], row
        assert row["kept_counter_bytes"] == 8 * row["entries"] * row["track_kept"], row
        assert row["bytes_per_sample"] == table + 8 * row["track_kept"]
        # measured (-1: the kernel does not let RSS peaks be reset); too small here to bound: the
        # allocator reuses freed pages, so the full run's 1e9 rows are where it means something
        assert isinstance(row["select_peak_growth_bytes"], int) and row["select_peak_growth_bytes"] >= -1


def test_the_precision_replay_compares_every_strategy_and_half_type(tiny):
    rows = tiny[0]["precision_replay"]
    assert {(r["strategy"], r["dtype"]) for r in rows} == {
        (s, d) for s in ("epsilon_greedy", "ucb") for d in ("float16", "bfloat16")}
    for row in rows:
        assert 0.5 < row["closed_selection_agreement_min"] <= row["closed_selection_agreement_mean"] <= 1.0, row
        assert 0.9 < row["open_top_agreement_min"] <= row["open_top_agreement_mean"] <= 1.0, row
        assert 0.5 < row["closed_top_agreement_min"] <= 1.0, row


def test_allgather_bytes_are_counted_from_the_payload_shapes(tiny):
    for row in tiny[0]["communication"]:
        w, b = row["world"], row["batch_per_rank"]
        # gather_updates: a header of 6 int64 (size, correct flag, distributed.Agreement's 4) and a
        # (3, batch) float64 payload from each other rank
        assert row["replicated_bytes_received_per_rank"] == (w - 1) * (6 * 8 + 3 * b * 8)
        assert row["collectives_per_step"] == 2 and row["sharded_bytes_per_step"] == 0


def test_overlap_is_close_to_the_prediction_and_the_union_has_equal_quotas(tiny):
    result = tiny[0]
    for row in result["overlap"]:
        assert 0.95 < row["overlap_top"] <= 1.0
        assert abs(row["overlap_top"] - row["predicted_overlap_top"]) < 0.01, row
        k = round(0.5 * row["num_samples"])
        quota = k // row["world"]
        assert row["sharded_top"] == row["world"] * (quota - round(0.2 * quota))
        assert row["sharded_selected"] == row["world"] * quota
    assert result["fashion_mnist"]["train_accuracy_after_trace"] > 0.6  # a real, if short, run


def test_predicted_overlap_matches_a_direct_simulation(scale):
    """The analytic overlap against a plain numpy simulation (random shards, argpartition)."""
    rng = np.random.default_rng(3)
    n, world, k_top = 200_000, 16, 80_000
    scores = rng.random(n)
    glob = np.zeros(n, bool)
    glob[np.argpartition(-scores, k_top)[:k_top]] = True
    perm = rng.permutation(n).reshape(world, -1)
    hits = sum(glob[ids[np.argpartition(-scores[ids], k_top // world)[: k_top // world]]].sum() for ids in perm)
    assert abs(hits / k_top - scale.predicted_overlap(n, world, k_top)) < 0.002


def test_sharded_accuracy_tiny_runs_both_modes_in_step(tmp_path, fashion_mnist_dir, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # the ranks import the worker by module name
    import sharded_accuracy

    out = tmp_path / "acc.json"
    result = sharded_accuracy.main(["--tiny", "--out", str(out)])
    runs = {r["mode"]: r for r in json.loads(out.read_text())["runs"]}
    assert set(runs) == {"auto", "sharded", "sharded-compact"}
    assert len({r["steps_per_rank"] for r in runs.values()}) == 1  # every mode in the same steps
    assert runs["sharded"]["table_rows_rank0"] == 2000 and runs["auto"]["table_rows_rank0"] == 4000  # one shard
    assert runs["sharded-compact"]["table_rows_rank0"] == 2000
    assert all(r["test_acc"] > 40 for r in runs.values())  # 10 classes: well above chance after 2 epochs
    assert len(result["sharded_minus_replicated_pt"]) == 1
    assert len(result["minus_replicated_pt"]["sharded-compact"]) == 1
