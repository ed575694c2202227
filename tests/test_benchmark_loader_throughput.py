"""benchmarks/loader_throughput.py: a seconds-long run of every row kind, and the interleaving
that keeps one loader from always being timed right after another."""

import json
import subprocess
import sys
from pathlib import Path

import pytest


def test_interleaved_rounds_rotate_the_order(benchmark_script):
    module = benchmark_script("loader_throughput")
    calls = []
    result = module.interleaved(lambda loader: calls.append(loader) or len(calls), {"a": "A", "b": "B", "c": "C"}, 3)
    assert calls[:3] == ["A", "B", "C"]  # the warm-up
    assert calls[3:] == ["A", "B", "C", "B", "C", "A", "C", "A", "B"]  # each loader first once, after each other once
    assert result == {"a": [4, 9, 11], "b": [5, 7, 12], "c": [6, 8, 10]}


def test_a_tiny_run_measures_every_row_kind(tmp_path):
    """In a process of its own: ffcv's numba functions print ignored finalizer errors at exit."""
    pytest.importorskip("ffcv")
    out = tmp_path / "loader.json"
    script = Path(__file__).parents[1] / "benchmarks" / "loader_throughput.py"
    result = subprocess.run([
        sys.executable, str(script), "--limit", "600", "--photos", "12", "--max-sides", "64", "--epochs", "1",
        "--threads", "1", "--torch-workers", "0", "--torch-batches", "1", "--convert-reps", "1",
        "--workdir", str(tmp_path / "w"), "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    written = json.loads(out.read_text())
    assert written["benchmark"] == "loader_throughput" and written["machine"]["fastprune_simd"]
    systems = {(row["system"], row["data"]) for row in written["runs"]}
    for data in ("photo64_rrc160", "photo64_rrc224", "photo64_center224"):
        assert {("fastprune", data), ("fastprune_2tap", data), ("ffcv", data)} <= systems
    assert all(row["img_per_s_median"] > 0 for row in written["runs"])
    assert 0 < written["keep_half"]["ratio_median"] and 0 < written["photo_keep_half"]["ratio_median"]
