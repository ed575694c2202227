"""fastprune train's settings, threads, log and process state where no other test pinned them
down (mutation audit of train/, with test_train_boundaries.py): a resume with another --lr, the
thread count capped by a container's CPU quota, each epoch line flushed, numpy's stream kept."""
from __future__ import annotations

import json
import sys

import numpy as np
import torch

import fastprune
from fastprune.cli import main


def _store(path, seed, n=64, classes=2):
    rng = np.random.default_rng(seed)
    return fastprune.convert.from_arrays(rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8), np.arange(n) % classes,
                                         path, progress=False, workers=1)


def _args(train, val, *extra):
    return ["train", "--train", str(train), "--val", str(val), "--epochs", "1", "--width", "4", "--batch-size", "32",
            "--threads", "1", "--no-progress", "--mean", "0.5", "0.5", "0.5", "--std", "0.25", "0.25", "0.25", *extra]


def test_resume_with_another_lr_is_refused(tmp_path, capsys):
    train, val = _store(tmp_path / "t.beton", 0), _store(tmp_path / "v.beton", 1)
    checkpoint = tmp_path / "run.pt"
    assert main(_args(train, val, "--checkpoint", str(checkpoint), "--lr", "0.1")) == 0
    capsys.readouterr()
    assert main(_args(train, val, "--checkpoint", str(checkpoint), "--resume", "--lr", "0.5")) == 1
    assert "lr=0.1 in the checkpoint, 0.5 now" in capsys.readouterr().err


def test_threads_default_to_the_usable_cpus(tmp_path, monkeypatch):
    import fastprune.train.cli as train_cli

    train, val = _store(tmp_path / "t.beton", 0), _store(tmp_path / "v.beton", 1)
    i = _args(train, val).index("--threads")
    args = _args(train, val, "--log-json", str(tmp_path / "log.json"))
    del args[i:i + 2]
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        monkeypatch.setattr(train_cli, "usable_cpus", lambda: 1)  # a container quota of one CPU
        assert main(args) == 0
    finally:
        torch.set_num_threads(before)
    assert json.loads((tmp_path / "log.json").read_text())["torch_threads"] == 1


class FlushRecorder:
    def __init__(self):
        self.events = []

    def write(self, text):
        self.events.append(("write", text))
        return len(text)

    def flush(self):
        self.events.append(("flush", None))


def test_fit_log_stdout_flushes_each_epoch_line(monkeypatch):
    from test_train_boundaries import MemLoader, Zero

    from fastprune.train import fit

    out = FlushRecorder()
    monkeypatch.setattr(sys, "stdout", out)
    fit(Zero(), MemLoader(batches=1), None, epochs=1, progress=False)
    lines = [i for i, (kind, text) in enumerate(out.events) if kind == "write" and text.startswith("epoch 1/1")]
    assert lines and ("flush", None) in out.events[lines[0]:]


def test_train_in_process_leaves_numpys_random_stream_as_it_was(tmp_path):
    train, val = _store(tmp_path / "t.beton", 0), _store(tmp_path / "v.beton", 1)
    np.random.seed(3)
    assert main(_args(train, val, "--seed", "5")) == 0  # run_recipe seeds numpy's global stream
    drawn = np.random.rand()
    np.random.seed(3)
    assert drawn == np.random.rand()
