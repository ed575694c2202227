"""benchmarks/host_buffers.py --tiny: host Normalize's output pool sized for the loader against
the first rule (8 kept, other shapes dropped), written out."""

import json

import numpy as np


def test_tiny_run_counts_the_arrays_each_rule_allocates(benchmark_script, tmp_path):
    out = tmp_path / "host_buffers.json"
    benchmark_script("host_buffers").main(["--tiny", "--workdir", str(tmp_path / "work"), "--out", str(out)])
    written = json.loads(out.read_text())
    sized, first = written["runs"]
    assert (sized["arm"], first["arm"]) == ("sized", "8 kept") and sized["batches_per_epoch"] == 8  # 60 photos
    # The first rule drops the full-size arrays at each epoch's short last batch: the next epoch
    # allocates one again, then the short one. The sized pool keeps both (it allocates only when
    # more batches are alive at once than ever before: the test in test_loader.py fixes that).
    assert all(fresh >= 2 for fresh in first["fresh_arrays_all"])
    assert sum(sized["fresh_arrays_all"]) < sum(first["fresh_arrays_all"])
    assert all(r["img_per_s_median"] > 0 for r in written["runs"]) and "batch 8, 4 threads" in written["ratios"]
    assert "| 8 | 4 |" in out.with_suffix(".md").read_text()


def test_the_first_rule_drops_other_shapes_and_keeps_eight(benchmark_script):
    pool = benchmark_script("host_buffers").CountingBuffers(first_rule=True)
    held = [pool.take((4, 3), np.float32) for _ in range(10)]  # all in use: 10 allocated, 8 kept
    assert pool.allocated == 10 and len(pool._arrays) == 8
    del held
    pool.take((1, 3), np.float32)  # a short last batch: the full-size arrays go
    assert [a.shape for a in pool._arrays] == [(1, 3)]
    pool.take((4, 3), np.float32)
    assert pool.allocated == 12
