"""benchmarks/fit_overhead.py --tiny runs both ways of training on the same pruned epochs."""

import json
import math


def test_tiny_run_times_a_bare_loop_and_fit_over_the_same_pruned_epochs(benchmark_script, tmp_path,
                                                                        fashion_mnist_dir):
    out = tmp_path / "fit_overhead.json"
    result = benchmark_script("fit_overhead").main(["--tiny", "--out", str(out)])
    written = json.loads(out.read_text())
    assert written["benchmark"] == "fit_overhead" and written["machine"]["cores"] >= 1
    assert written["steps_per_epoch"] == math.ceil(30_000 / 2048)  # keep 0.5 of the 60k training images
    assert len(written["bare_epoch_s_all"]) == len(written["fit_epoch_s_all"]) == written["epochs_timed"] == 1
    assert written["fit_over_bare"] == result["fit_epoch_s_median"] / result["bare_epoch_s_median"]
    assert "| bare loop s/epoch |" in out.with_suffix(".md").read_text()
