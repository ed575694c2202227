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
