"""benchmarks/epoch_start.py --tiny: both settings timed over whole epochs and written out."""

import json


def test_tiny_run_times_both_settings(benchmark_script, tmp_path):
    out = tmp_path / "epoch_start.json"
    result = benchmark_script("epoch_start").main(["--tiny", "--workdir", str(tmp_path / "work"), "--out", str(out)])
    written = json.loads(out.read_text())
    assert written["benchmark"] == "epoch_start" and written["batches_per_epoch"] == 6  # 48 photos, batch 8
    assert [r["setting"] for r in written["rows"]] == ["first round pooled", "each producer alone"]
    for row in written["rows"]:
        assert 0 < row["first_batch_s"] <= row["data_wait_s"] + 1e-9 and row["data_wait_s"] < row["epoch_s"]
        assert row["epoch_s"] >= result["ideal_epoch_s"]
    assert "| first round pooled |" in out.with_suffix(".md").read_text()
