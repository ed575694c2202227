"""benchmarks/resize.py --tiny: both resizes timed on the same crops and written out."""

import json


def test_tiny_run_times_both_resizes(benchmark_script, tmp_path):
    out = tmp_path / "resize.json"
    benchmark_script("resize").main(["--tiny", "--out", str(out)])
    written = json.loads(out.read_text())
    assert written["benchmark"] == "resize" and written["machine"]["cores"] >= 1
    [row] = written["rows"]
    assert row["size"] == 32 and 0 < row["crops_shrinking"] <= 1
    assert row["antialias_img_per_s"] > 0 and row["two_tap_img_per_s"] > 0
    assert "| 32 |" in out.with_suffix(".md").read_text()
