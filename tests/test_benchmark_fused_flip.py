"""benchmarks/fused_flip.py --tiny: every case timed both ways and written out."""

import json


def test_tiny_run_times_fused_and_separate_flips_for_every_case(benchmark_script, tmp_path, fashion_mnist_dir):
    out = tmp_path / "fused_flip.json"
    benchmark_script("fused_flip").main(["--tiny", "--workdir", str(tmp_path / "work"), "--out", str(out)])
    written = json.loads(out.read_text())
    assert written["benchmark"] == "fused_flip" and written["machine"]["cores"] >= 1
    cases = [r["case"] for r in written["rows"]]
    assert len(cases) == 6 and "photos512 RRC224 uint8" in cases and "raw28 flip + Normalize" in cases
    for row in written["rows"]:
        assert row["fused_img_per_s"] > 0 and row["numba_pass_img_per_s"] > 0
        assert len(row["fused_all"]) == len(row["numba_pass_all"]) == 1
    assert "| raw28 flip uint8 |" in out.with_suffix(".md").read_text()
