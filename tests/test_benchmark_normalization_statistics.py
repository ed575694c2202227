"""benchmarks/normalization_statistics.py --tiny: every store timed on each thread count, one set of figures."""

import json


def test_tiny_run_times_every_store_on_each_thread_count(benchmark_script, tmp_path, fashion_mnist_dir):
    out = tmp_path / "normalization_statistics.json"
    benchmark_script("normalization_statistics").main(["--tiny", "--threads", "1", "2", "--out", str(out),
                                                       "--workdir", str(tmp_path / "work")])
    written = json.loads(out.read_text())
    assert written["benchmark"] == "normalization_statistics" and written["threads"] == [1, 2]
    assert [r["store"] for r in written["rows"]] == ["photos256 (mixed sizes)", "photos512 (mixed sizes)",
                                                      "raw28 (one size)"]
    for row in written["rows"]:
        assert set(row["seconds"]) == {"1", "2"} and all(s > 0 for s in row["seconds"].values())
        assert row["speedup_vs_1"]["1"] == 1.0
    assert "| raw28 (one size) |" in out.with_suffix(".md").read_text()
