"""benchmarks/cpu_precision.py --tiny times bf16 and fp32 full-data runs in alternating pairs."""

import json


def test_tiny_run_times_both_precisions_and_says_whether_the_amp_rule_agrees(benchmark_script, tmp_path,
                                                                             fashion_mnist_dir):
    from fastprune.bench.machine import cpu_has_fast_bf16

    out = tmp_path / "cpu_precision.json"
    result = benchmark_script("cpu_precision").main(["--tiny", "--out", str(out)])
    written = json.loads(out.read_text())
    assert written["benchmark"] == "cpu_precision" and written["machine"]["cpu_id"] == result["machine"]["cpu_id"]
    assert [run["amp"] for run in written["runs"]] == ["bf16", "off"]
    assert all(len(run["epoch_s"]) == 1 and run["samples"] == 2048 for run in written["runs"])  # the first untimed
    bf16, fp32 = (written["precisions"][amp]["epoch_s_median"] for amp in ("bf16", "off"))
    assert written["fp32_over_bf16_paired"] == [fp32 / bf16] and written["fp32_over_bf16_median"] == fp32 / bf16
    assert written["rule_picks_bf16"] == cpu_has_fast_bf16()
    report = out.with_suffix(".md").read_text()
    assert "| bf16 |" in report and "| fp32 |" in report
    assert ("agrees" if (fp32 > bf16) == cpu_has_fast_bf16() else "DISAGREES") in report
