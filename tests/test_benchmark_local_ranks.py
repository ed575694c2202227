"""benchmarks/local_ranks.py --tiny: ranks started together at their share of the CPUs and at every
CPU, written out."""

import json
import os

from fastprune import _cpus


def test_tiny_run_times_ranks_at_their_share_and_at_every_cpu(benchmark_script, tmp_path):
    out = tmp_path / "local_ranks.json"
    benchmark_script("local_ranks").main(["--tiny", "--workdir", str(tmp_path / "work"), "--out", str(out)])
    written = json.loads(out.read_text())
    assert written["benchmark"] == "local_ranks" and len(written["all"]) == 2
    share, every = written["runs"]
    assert (share["setting"], every["setting"]) == ("share", "every CPU") and share["ranks"] == every["ranks"] == 2
    assert every["threads_per_rank"] == len(os.sched_getaffinity(0))  # threads= every CPU, as the old default
    assert share["threads_per_rank"] == max(1, _cpus.usable_cpus() // 2)  # two unbound ranks: half each
    # a rank holds threads x (prefetch + 1) batches of 8 float32 224 px images
    assert share["in_flight_bytes"] == share["threads_per_rank"] * 3 * 8 * 3 * 224 * 224 * 4
    assert all(r["img_per_s_median"] > 0 and r["peak_rss_bytes_median"] > 0 for r in written["runs"])
    assert len(written["paired_ratios"]["2"]) == 1 and written["ratios"]["2"] > 0
    assert "| 2 | share |" in out.with_suffix(".md").read_text()
