"""A pass's and a store's life at its edges (an audit of 2026-12-07): a pass finalized on one of its
own producer threads, a Ctrl-C inside close(), a pass continued after fork(), a store file shrunk
in place under reads that skipped the check, a read racing close(), a pickle after a chdir."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import fastprune
from fastprune.convert import from_arrays
from fastprune.errors import StoreError
from fastprune.loader import loader as loader_module


@pytest.fixture
def store_path(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (64, 8, 8, 3), np.uint8)
    return from_arrays(images, np.arange(64) % 4, tmp_path / "s.beton", progress=False)


def _producers_alive() -> int:
    return sum(t.name.startswith("fastprune-loader-") and t.is_alive() for t in threading.enumerate())


def _until_no_producers(seconds=5.0) -> int:
    deadline = time.monotonic() + seconds
    while _producers_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    return _producers_alive()


def test_a_pass_closed_on_its_own_producer_thread_closes_whole():
    """The cycle collector can finalize an abandoned pass on one of its producers: close() joined
    that thread itself ('cannot join current thread', 49 in 600 abandoned passes), and stopped
    before it was done (the readahead thread never joined, the pass never marked closed)."""
    raised, made = [], threading.Event()

    def build(ids, weights, turn):  # stands for a gc run that finalizes the pass here
        made.wait(5)
        if ids[0] == 0:  # one producer (one collection at a time); the other is joined
            try:
                run.close()
            except BaseException as exc:  # noqa: BLE001
                raised.append(exc)
        return ids

    build.epoch = 0
    run = loader_module._EpochRun(build, np.arange(8), np.ones(8, np.float32), np.array([0, 4, 8]), 2, 1)
    made.set()
    deadline = time.monotonic() + 5
    while not run._closed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert raised == [] and run._closed


def test_a_ctrl_c_inside_close_still_stops_the_producers(store_path, monkeypatch):
    """The generator's finally closed the pass once; a Ctrl-C landing in close() left its
    producers polling (and holding their batches) until the process exited."""
    real, calls = loader_module._EpochRun.close, []

    def interrupted_once(self):
        calls.append(self)
        if len(calls) == 1:
            raise KeyboardInterrupt
        real(self)

    monkeypatch.setattr(loader_module._EpochRun, "close", interrupted_once)
    passes = iter(fastprune.Loader(store_path, 4, threads=2, prefetch=4))
    next(passes)
    with pytest.raises(KeyboardInterrupt):
        passes.close()
    assert len(calls) == 2 and _until_no_producers() == 0


def test_the_exit_hook_closes_every_pass_past_one_that_fails(store_path):
    class Failing:
        exiting = False

        def close(self):
            raise RuntimeError("a half-made pass")

    passes = iter(fastprune.Loader(store_path, 4, threads=2, prefetch=4))
    next(passes)
    failing = Failing()
    loader_module._LIVE_RUNS.add(failing)
    try:
        loader_module._close_live_runs()
    finally:
        loader_module._LIVE_RUNS.discard(failing)
    assert _until_no_producers() == 0


def test_a_pass_continued_in_a_forked_child_says_to_start_a_new_one():
    """Its producers stay in the parent: 'loader threads stopped without delivering a batch' named no fix."""
    def build(ids, weights, turn):
        return ids

    build.epoch = 0
    run = loader_module._EpochRun(build, np.arange(8), np.ones(8, np.float32), np.array([0, 4, 8]), 1, 0)
    run.close()  # as in a child: no producer thread there
    run._pid = os.getpid() + 1
    with pytest.raises(RuntimeError, match=r"started before os.fork\(\).*start a new pass in the child"):
        run._take(0)


def test_reads_of_a_store_shrunk_in_place_raise_store_error_not_sigbus(store_path, tmp_path):
    """store[i] and a Loader's batches checked the file; Loader(store), verify(), class_names and
    `fastprune info` read the mapping past the file's new end: SIGBUS, the process killed."""
    script = textwrap.dedent(f"""
        import os, sys, fastprune
        from fastprune.errors import StoreError
        from fastprune.store.info import describe
        calls = {{"Loader": lambda s: fastprune.Loader(s, 4), "verify": lambda s: s.verify(),
                  "class_names": lambda s: s.class_names, "describe": describe}}
        for name, call in calls.items():
            store = fastprune.Store({str(store_path)!r})
            os.truncate({str(store_path)!r}, 4096)
            try:
                call(store)
                print(name, "read a shrunk file")
            except StoreError as exc:
                print(name, "StoreError" if "changed in place" in str(exc) else exc)
            with open({str(store_path)!r}, "r+b") as f:  # back to its size for the next call
                f.truncate(os.path.getsize({str(tmp_path / 'copy.beton')!r}))
                f.seek(0)
                f.write(open({str(tmp_path / 'copy.beton')!r}, "rb").read())
    """)
    (tmp_path / "copy.beton").write_bytes(store_path.read_bytes())
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[:4] == [f"{name} StoreError" for name in ("Loader", "verify", "class_names",
                                                                             "describe")]


def test_a_read_racing_close_finishes_or_says_closed(store_path, monkeypatch):
    """close() on another thread between the file check and the read met None: a TypeError."""
    store = fastprune.Store(store_path)
    expected = store[5]
    real = fastprune.Store.check_unchanged

    def closed_right_after(self):
        real(self)
        self.close()

    monkeypatch.setattr(fastprune.Store, "check_unchanged", closed_right_after)
    image, label = store[5]  # the arrays it took before the close keep the mapping
    np.testing.assert_array_equal(image, expected[0])
    assert label == expected[1]
    monkeypatch.undo()
    with pytest.raises(StoreError, match="the store is closed"):
        store.field_value(5, "label")


def test_a_store_opened_by_a_relative_path_pickles_where_it_lies(store_path, tmp_path, monkeypatch):
    """Pickled by the path as given: after os.chdir (Hydra's run folders), a spawn worker's or a
    deepcopy's Store was 'no such store file'."""
    monkeypatch.chdir(store_path.parent)
    store = fastprune.Store(store_path.name)
    loader = fastprune.Loader(store, 8, shuffle=False)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    copy = pickle.loads(pickle.dumps(store))
    np.testing.assert_array_equal(copy[3][0], store[3][0])
    first = next(iter(pickle.loads(pickle.dumps(loader))))
    np.testing.assert_array_equal(first.indices.numpy(), np.arange(8))


def test_a_store_opened_from_a_folder_deleted_since_still_pickles(store_path, tmp_path, monkeypatch):
    (tmp_path / "run").mkdir()
    monkeypatch.chdir(tmp_path / "run")
    store = fastprune.Store(f"../{store_path.name}")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run").rmdir()  # '.../run/../s.beton' no longer resolves
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(store))[3][0], store[3][0])
