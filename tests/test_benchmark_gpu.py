"""benchmarks/gpu.py's CPU dry run (--tiny): every section runs and the files hold what the GPU
run will report, so the script cannot rot between the sessions that have a GPU."""

import json


def test_gpu_benchmark_dry_run_writes_every_section(benchmark_script, fashion_mnist_dir, tmp_path):
    gpu = benchmark_script("gpu")
    out = tmp_path / "gpu.json"
    gpu.main(["--tiny", "--device", "cpu", "--fmnist", str(fashion_mnist_dir), "--out", str(out),
              "--workdir", str(tmp_path / "work")])
    result = json.loads(out.read_text())
    assert result["benchmark"] == "gpu" and result["device"]["device"] == "cpu"
    assert result["device"]["gpu"] is None and result["machine"]["cores"] >= 1
    feed = {(r["data"], r["threads"], r["normalize_on"]) for r in result["feed"]}
    assert feed == {(d, t, w) for d in ("raw28", "jpeg_rrc32") for t in (1, 2) for w in ("device", "host")}
    assert all(r["img_per_s_median"] > 0 for r in result["feed"])
    assert {(r["data"], r["antialias"]) for r in result["feed"]} == {("raw28", None), ("jpeg_rrc32", "on")}
    steps = {r["workload"]: r for r in result["step_vs_fit"]}
    assert set(steps) == {"recipe", "photos"}
    assert sorted((r["workload"], r["fit_thread_nice"], r["fit_first_round"]) for r in result["step_vs_fit"]) == [
        (w, n, f) for w in ("photos", "recipe") for n in (0, 10) for f in ("alone", "pooled")]
    import fastprune.loader.loader as loader_module
    assert loader_module.POOLED_FIRST_ROUND is True  # restored after the rows that changed it
    assert all(r["step_img_per_s"] > 0 and r["fit_fraction_of_step"] > 0 for r in steps.values())
    assert all(r["gpu_busy_pct_fit"] is None for r in steps.values())  # no GPU: no figure, not 0
    rows = {(r["workload"], r["strategy"]) for r in result["end_to_end"]}
    assert rows == {(w, s) for w in ("recipe", "photos") for s in ("full", "epsilon_greedy", "ucb")}
    assert all(r["speedup"] > 0 for r in result["end_to_end"] if r["strategy"] != "full")
    report = out.with_suffix(".md").read_text()
    assert "## (a)" in report and "## (b)" in report and "| photos | ucb | 1 |" in report


def test_feed_rate_times_only_the_batches_it_counts(benchmark_script):
    """The clock starts at the first batch and stops at the last counted one: the producers'
    start-up and the wait for batches in progress when the loop is left made a 40-batch rate
    0.6-0.7x a 200-batch one (CUDA-path audit). Here start-up and close take 0.3 s each, the
    10 counted batches 0.1 s in all."""
    import time
    from types import SimpleNamespace

    import torch

    gpu = benchmark_script("gpu")

    def batches():
        time.sleep(0.3)  # producers starting
        try:
            for _ in range(100):
                yield SimpleNamespace(images=torch.empty(256, 1))
                time.sleep(0.01)
        finally:
            time.sleep(0.3)  # closing: batches in progress finish

    class Loader:  # as a Loader: each iteration a new iterator, closed when the loop is left
        def __iter__(self):
            return batches()

    rate = gpu.feed_rate(Loader(), 11, torch.device("cpu"))
    assert 10 * 256 / 0.1 / 2 < rate < 10 * 256 / 0.1 * 1.5  # ~25.6k img/s; the whole loop: ~3.6k
