"""benchmarks/cold_read.py --tiny: both settings timed from a cold start and written out, on this
machine's disk and through the FUSE slow disk (benchmarks/slow_disk.c) where FUSE is available."""

import json
import os
import shutil
import subprocess

import pytest


def _fuse_available() -> bool:
    if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None or os.geteuid() != 0:
        return False
    return subprocess.run(["pkg-config", "--exists", "fuse3"]).returncode == 0


@pytest.mark.parametrize("slow_disk_us", [0, 2000])
def test_tiny_run_times_both_settings_cold_and_warm(benchmark_script, tmp_path, slow_disk_us):
    if slow_disk_us and not _fuse_available():
        pytest.skip("no FUSE here (/dev/fuse, fusermount3, libfuse3-dev, root)")
    out = tmp_path / "cold_read.json"
    benchmark_script("cold_read").main(["--tiny", "--workdir", str(tmp_path / "work"), "--out", str(out),
                                        "--slow-disk-us", str(slow_disk_us)])
    written = json.loads(out.read_text())
    assert written["benchmark"] == "cold_read"
    assert [(r["data"], r["setting"]) for r in written["runs"]] == [
        ("raw 64 px", "read-ahead (default)"), ("raw 64 px", "no hints"),
        ("photos 256, RRC224 + flip", "read-ahead (default)"), ("photos 256, RRC224 + flip", "no hints")]
    for row in written["runs"]:
        assert row["cold_img_per_s_median"] > 0 and len(row["warm_img_per_s_all"]) == 3
        assert row["warm_resident_at_start"] == [1.0] * 3  # the store in memory: no hints sent
        assert row["warm_hinted_batches"] == [0, 0, 0]
        assert all(0.9 <= r < 1.0 for r in row["mostly_resident_at_start"])  # 1/32 dropped
    assert set(written["ratios"]) == {"raw 64 px t2", "photos 256, RRC224 + flip t2"}
    assert set(written["ratios"]["raw 64 px t2"]) == {"cold", "mostly", "warm"}
    hinted = {(r["data"], r["setting"]): r["cold_hinted_batches"][0] for r in written["runs"]}
    assert [n for (_, setting), n in hinted.items() if setting == "no hints"] == [0, 0]
    if slow_disk_us:
        # reads take 2 ms there, so the thread probes the first batches before the producers'
        # faults bring them in (on a fast disk with a large read-around they may come first)
        assert all(n >= 1 for (_, setting), n in hinted.items() if setting != "no hints")
        assert written["disk"] == {"kind": "slow_disk.c (FUSE)", "latency_us": slow_disk_us, "queue": 32}
        # the FUSE file's pages were dropped before each cold pass: none was in memory at its start
        assert all(max(row["cold_resident_at_start"]) < 0.5 for row in written["runs"])
        assert not os.path.ismount(tmp_path / "work" / "slow")  # unmounted afterwards
    assert "| raw 64 px | 2 | read-ahead (default) |" in out.with_suffix(".md").read_text()
