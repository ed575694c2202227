"""Hardening: killed conversions, concurrent readers and writers, bad API input, long loading runs."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import fastprune
from fastprune import StoreError
from fastprune.store import IntField, RGBImageField, Store, write_dataset

FMNIST = Path("/usr/share/datasets/fashion-mnist")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _convert_cmd(out: Path, *extra) -> list[str]:
    return [sys.executable, "-m", "fastprune", "convert", "fashion-mnist", "--split", "test", "--out", str(out),
            "--no-progress", *extra]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


# --- 3. conversions killed with SIGKILL ---------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigkilled_conversions_leave_no_file_and_a_rerun_succeeds(fashion_mnist_dir, tmp_path):
    sources = sorted(fashion_mnist_dir.glob("t10k-*"))
    before = {p.name: _sha256(p) for p in sources}
    out = tmp_path / "fm.beton"

    # calibrate: how long a whole conversion takes here (imports included)
    start = time.monotonic()
    subprocess.run(_convert_cmd(out, "--workers", "2"), check=True, capture_output=True, timeout=120)
    full = time.monotonic() - start
    out.unlink()

    rng = np.random.default_rng(1234)
    killed_mid_write = completed = 0
    for attempt in range(8):
        extra = ("--workers", "2") if attempt % 2 == 0 else ("--workers", "1", "--jpeg")
        proc = subprocess.Popen(_convert_cmd(out, *extra), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        if attempt < 2:  # at a random point of the whole run (imports included)
            time.sleep(float(rng.uniform(0.2, 1.0)) * full)
        else:  # at a random point after the temporary file appeared (encoding/writing/finishing)
            deadline = time.monotonic() + 60
            while not list(tmp_path.glob(".fm.beton.*.tmp")) and proc.poll() is None \
                    and time.monotonic() < deadline:
                time.sleep(0.005)
            time.sleep(float(rng.uniform(0.0, 0.6)))
        temps_before_kill = list(tmp_path.glob(".fm.beton.*.tmp"))
        proc.send_signal(signal.SIGKILL)  # the main process only; its workers are orphaned
        proc.wait(timeout=30)
        deadline = time.monotonic() + 20
        while _group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        orphans = _group_alive(proc.pid)
        if orphans:
            os.killpg(proc.pid, signal.SIGKILL)
        assert not orphans, "encoding workers kept running after their parent was SIGKILLed"
        if out.exists():  # it finished before the signal: a complete, valid file
            completed += 1
            assert Store(out).verify().ok
            out.unlink()
            continue
        killed_mid_write += bool(temps_before_kill)
        # nothing at the target; leftovers only under the temp naming pattern
        for leftover in tmp_path.iterdir():
            assert leftover.name.startswith(".fm.beton.") and leftover.name.endswith(".tmp"), leftover
    assert killed_mid_write >= 3, f"only {killed_mid_write} kills landed while the file was written"

    # a rerun succeeds, produces a verified file and removes the dead processes' temp files
    proc = subprocess.run(_convert_cmd(out), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with Store(out) as store:
        assert len(store) == 10_000 and store.verify().ok
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fm.beton"]
    assert {p.name: _sha256(p) for p in sources} == before, "the source files were modified"


def test_stale_temp_files_of_live_processes_and_other_hosts_are_kept(tmp_path):
    import socket

    from fastprune.store.writer import _temp_prefix

    path = tmp_path / "d.beton"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / (_temp_prefix(path, dead.pid) + "abc123.tmp")
    live = tmp_path / (_temp_prefix(path, os.getppid()) + "def456.tmp")
    other_host = tmp_path / f".d.beton.not-{socket.gethostname()}.{dead.pid}.ghi789.tmp"
    other_file = tmp_path / (_temp_prefix(tmp_path / "e.beton", dead.pid) + "jkl012.tmp")
    for p in (stale, live, other_host, other_file):
        p.write_bytes(b"partial")
    write_dataset(path, [(1,), (2,)], {"label": IntField()}, progress=False)
    assert not stale.exists()
    assert live.exists() and other_host.exists() and other_file.exists()
