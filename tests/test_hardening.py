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


# --- 4. bad API input: clear errors that name the argument ---------------------------------------

def _tiny_store(path: Path, n: int = 8) -> Path:
    rng = np.random.default_rng(0)
    rows = [(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8), i % 3) for i in range(n)]
    return write_dataset(path, rows, {"image": RGBImageField(), "label": IntField()}, progress=False,
                         page_size=1 << 12)


@pytest.mark.parametrize("cls", ["UniformRandom", "EpsilonGreedy", "UCB"])
@pytest.mark.parametrize("keep, exc", [(0, ValueError), (0.0, ValueError), (-0.5, ValueError), (1.0001, ValueError),
                                       (2, ValueError), (float("nan"), ValueError), (float("inf"), ValueError),
                                       ("0.5", TypeError), (None, TypeError), (True, TypeError)])
def test_keep_outside_unit_interval(cls, keep, exc):
    with pytest.raises(exc, match="keep"):
        getattr(fastprune, cls)(100, keep=keep)


def test_keep_so_small_that_nothing_is_kept():
    with pytest.raises(ValueError, match="keep"):
        fastprune.UniformRandom(10, keep=0.01)


@pytest.mark.parametrize("eps, exc", [(-0.01, ValueError), (1.01, ValueError), (float("nan"), ValueError),
                                      ("0.1", TypeError), (None, TypeError)])
def test_eps_outside_closed_unit_interval(eps, exc):
    with pytest.raises(exc, match="eps"):
        fastprune.EpsilonGreedy(100, keep=0.5, eps=eps)


@pytest.mark.parametrize("eps", [0, 0.0, 1, 1.0, np.float32(0.5)])
def test_eps_bounds_are_accepted(eps):
    assert fastprune.EpsilonGreedy(100, keep=0.5, eps=eps).eps == float(eps)


@pytest.mark.parametrize("name, value, exc", [
    ("batch_size", 0, ValueError), ("batch_size", -3, ValueError), ("batch_size", 1.5, TypeError),
    ("batch_size", "8", TypeError), ("batch_size", None, TypeError), ("batch_size", True, TypeError),
    ("threads", 0, ValueError), ("threads", 2.0, TypeError), ("prefetch", 0, ValueError),
    ("prefetch", "2", TypeError)])
def test_loader_integer_arguments(tmp_path, name, value, exc):
    path = _tiny_store(tmp_path / "t.beton")
    kwargs = {"batch_size": 2, name: value}
    with pytest.raises(exc, match=name):
        fastprune.Loader(path, **kwargs)


def test_loader_accepts_numpy_integers(tmp_path):
    loader = fastprune.Loader(_tiny_store(tmp_path / "t.beton"), np.int64(3), threads=np.int32(1))
    assert [len(b.indices) for b in loader] == [3, 3, 2]


def _empty_store(tmp_path: Path) -> Path:
    """A structurally valid store with 0 samples (header + descriptors, no metadata, no table)."""
    from fastprune.store import format as fmt

    full = _tiny_store(tmp_path / "full.beton")
    data = bytearray(full.read_bytes())
    meta_start = fmt.metadata_start(2)
    header = np.frombuffer(bytes(data[:fmt.HEADER_TYPE.itemsize]), fmt.HEADER_TYPE).copy()
    header["num_samples"] = 0
    header["alloc_table_ptr"] = meta_start
    data[:fmt.HEADER_TYPE.itemsize] = header.tobytes()
    path = tmp_path / "empty.beton"
    path.write_bytes(bytes(data[:meta_start]))
    return path


def test_empty_store_opens_but_the_loader_and_strategies_refuse_it(tmp_path):
    path = _empty_store(tmp_path)
    with Store(path) as store:
        assert len(store) == 0
        with pytest.raises(IndexError):
            store[0]
    with pytest.raises(ValueError, match="store_or_path.*no samples"):
        fastprune.Loader(path, 4)
    with pytest.raises(ValueError, match="num_samples"):
        fastprune.UniformRandom(0, keep=0.5)


def test_empty_source_is_refused_by_the_writer(tmp_path):
    with pytest.raises(fastprune.ConversionError, match="empty"):
        write_dataset(tmp_path / "e.beton", [], {"label": IntField()}, progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("indices, losses, match", [
    (np.arange(3), np.ones(4), "losses has 4 entries but indices has 3"),
    (np.arange(3), np.ones(2), "losses has 2 entries but indices has 3"),
    (torch.arange(3), torch.ones(5), "losses has 5 entries"),
    (np.arange(3.0), np.ones(3), "indices must be integers"),
    (np.array([True, False, True]), np.ones(3), "indices must be integers"),
    (torch.arange(3.0), torch.ones(3), "indices must be integers"),
    (np.arange(3), np.array(["a", "b", "c"]), "losses must be numbers"),
    (np.arange(3), [1.0, None, 2.0], "losses must be numbers"),
    (np.arange(3), np.ones(3, complex), "losses must be numbers"),
    (np.arange(3), np.ones((3, 1)), "losses must be 1-D"),
    (np.arange(3), 1.0, "losses must be 1-D"),
])
def test_update_rejects_bad_losses_and_indices(indices, losses, match):
    strategy = fastprune.UniformRandom(10, keep=0.5)
    before = strategy.table.state_dict()
    with pytest.raises(ValueError, match=match):
        strategy.update(indices, losses)
    after = strategy.table.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "a rejected update changed the table"


def test_update_rejects_correct_of_wrong_length_and_out_of_range_indices():
    strategy = fastprune.UniformRandom(10, keep=0.5)
    with pytest.raises(ValueError, match="correct has 2 entries but indices has 3"):
        strategy.update(np.arange(3), np.ones(3), np.ones(2))
    with pytest.raises(IndexError, match="indices"):
        strategy.update(np.array([10]), np.ones(1))
    with pytest.raises(ValueError, match="NaN|nan|finite"):
        strategy.update(np.array([1]), np.array([np.nan]))
