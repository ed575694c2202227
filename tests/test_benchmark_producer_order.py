"""benchmarks/producer_order.py --tiny: the Loader's rule and the first design's, on real batches
and replayed at more threads, written out."""

import json
import threading
import time

import numpy as np


def test_tiny_run_compares_both_rules_in_every_part(benchmark_script, tmp_path):
    out = tmp_path / "producer_order.json"
    script = benchmark_script("producer_order")
    script.main(["--tiny", "--workdir", str(tmp_path / "work"), "--out", str(out)])
    written = json.loads(out.read_text())
    assert written["benchmark"] == "producer_order" and len(written["batch_times_s"]) == 12  # 2 epochs of 6
    real = [r for r in written["runs"] if r["part"] == "real"]
    assert [r["arm"] for r in real] == list(script.ARMS) and all(len(r["img_per_s_all"]) == 2 for r in real)
    replayed = [r for r in written["runs"] if r["part"] == "replay"]
    assert [(r["threads"], r["consumer"]) for r in replayed] == [(4, "at once")] * 2 + [(4, "1.1x")] * 2
    for r in replayed:  # the bound holds for both rules, and some batches were built ahead
        assert 4 <= r["peak_started_not_taken"] <= r["bound"] == 4 * 3 and 0 < r["share_of_ideal"] < 1.5
    assert set(written["ratios"]) == {"real", "replay 4 threads, consumer at once", "replay 4 threads, consumer 1.1x"}
    assert "| replay, share of ideal | 4 | at once |" in out.with_suffix(".md").read_text()


def test_the_baseline_builds_batch_k_on_producer_k_mod_threads(benchmark_script):
    """The "k % threads" arm really is the first design: with batch 0 stuck, producer 1 builds
    only its own batches (1, 3, 5) and stops at prefetch + 1 of them."""
    script = benchmark_script("producer_order")
    release, built = threading.Event(), []

    def build(ids, weights, turn=None):
        if ids[0] == 0:
            release.wait(10)
        built.append(int(ids[0]))
        return int(ids[0])

    build.epoch = 0
    count = 20
    run = script.FixedOrderRun(build, np.arange(count), np.ones(count, np.float32), np.arange(count + 1), 2, 2)
    try:
        deadline = time.monotonic() + 5
        while len(built) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)  # had it built more, they would be there by now
        assert sorted(built) == [1, 3, 5]
        release.set()
        assert list(run.batches()) == list(range(count))
    finally:
        release.set()
        run.close()
