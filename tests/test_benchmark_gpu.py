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


def test_the_gpu_script_s_carried_libraries_import_alone(tmp_path):
    """benchmarks/gpu_device_run.sh runs its CUDA tests with a pytest carried in .gpu/pylib (the
    lent machine has none and no network). Its copy list lacked pytest's own imports (pygments,
    py.py): run the way the script runs it, no test would have started, found only by simulating
    the script (torch 2.11). Here: the header's copy lines, into a folder of their own, must give a
    pytest with its timeout plugin, and the build backend, in a Python without site-packages; and
    what the run carries must fit the device tool's 64 MiB."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import pytest

    repo = Path(__file__).resolve().parents[1]
    script = (repo / "benchmarks" / "gpu_device_run.sh").read_text().splitlines()
    copies = [line[4:] for line in script[:12] if line.startswith("#   ") and ".venv/lib/python3.11" in line]
    assert len(copies) == 2, copies  # pylib and buildlib
    if not (repo / ".venv" / "lib" / "python3.11" / "site-packages").is_dir():
        pytest.skip("the copy lines name .venv's python3.11 site-packages, which this checkout lacks")
    for line in copies:
        line = line.replace(".gpu/", f"{tmp_path}/")
        subprocess.run(["bash", "-c", f"set -e; mkdir -p {tmp_path}/pylib {tmp_path}/buildlib; {line}"], cwd=repo,
                       check=True)

    def alone(folder: str, code: list[str]) -> subprocess.CompletedProcess:
        env = {**os.environ, "PYTHONPATH": str(tmp_path / folder)}
        return subprocess.run([sys.executable, "-S", *code], env=env, capture_output=True, text=True, cwd=tmp_path)

    help_text = alone("pylib", ["-m", "pytest", "--help"])
    assert help_text.returncode == 0, help_text.stderr[-2000:]
    assert "--timeout=TIMEOUT" in help_text.stdout  # the plugin loads from its carried metadata
    build = alone("buildlib", ["-c", "import nanobind, scikit_build_core.build"])
    assert build.returncode == 0, build.stderr[-2000:]

    def size(path: Path) -> int:
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size

    listed = subprocess.run(["git", "ls-files", "-z"], cwd=repo, capture_output=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout: what the device tool carries is its tracked files")
    tracked = listed.stdout
    fmnist = Path("/usr/share/datasets/fashion-mnist")
    carried = (sum(size(repo / name) for name in tracked.decode().split("\0") if name and (repo / name).is_file())
               + size(tmp_path / "pylib") + size(tmp_path / "buildlib") + 1_000_000  # the two .debs: 0.46 MB
               + (sum(size(f) for f in fmnist.glob("*.gz")) if fmnist.is_dir() else 31_000_000))
    assert carried < 60 * 2**20, f"{carried / 2**20:.1f} MiB would travel; the device tool takes 64 MiB"
