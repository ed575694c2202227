"""benchmarks/thread_nice.py --tiny: the work alone and under each thread_nice setting, written out."""

import json


def test_tiny_run_times_the_work_alone_and_under_each_setting(benchmark_script, tmp_path):
    out = tmp_path / "thread_nice.json"
    result = benchmark_script("thread_nice").main(["--tiny", "--workdir", str(tmp_path / "work"), "--out", str(out)])
    written = json.loads(out.read_text())
    assert written["benchmark"] == "thread_nice" and written["loader_threads"] >= 1
    assert [r["setting"] for r in written["rows"]] == ["alone", "nice 0", "nice 10"]
    assert written["rows"][0]["work_vs_alone"] == 1.0 and written["rows"][0]["wait_s"] == 0
    assert all(r["work_ms"] > 0 and r["batches_per_s"] > 0 for r in written["rows"])
    assert all(len(runs) == 1 for runs in written["all"].values()) and result["ops_per_batch"] >= 1
    assert "| nice 10 |" in out.with_suffix(".md").read_text()
