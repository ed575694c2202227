"""The README's main job (``bash scripts/run main`` -> ``python -m fastprune.main_job``): it
converts Fashion-MNIST once, describes the store, runs the benchmark's quick preset and ends
on where the plots went and a one-line verdict. Run here on a tiny subset for one epoch."""

from __future__ import annotations

import json

import torch

from fastprune import main_job


def test_main_job_converts_once_runs_the_quick_preset_and_ends_on_a_verdict(fashion_mnist_dir, tmp_path, capsys):
    data, out = tmp_path / "data", tmp_path / "quick.json"
    bench = ["--quick", "--train-limit", "600", "--epochs", "1", "--seeds", "0", "--strategies", "epsilon_greedy",
             "--out", str(out), "--threads", str(torch.get_num_threads()), "--amp", "off"]
    assert main_job.main(["--data-dir", str(data), "--bench", *bench]) == 0
    printed = capsys.readouterr().out
    assert (data / "fashion-mnist-train.beton").exists() and (data / "fashion-mnist-train-600.beton").exists()
    assert "samples" in printed  # `fastprune info` of the converted store
    assert "quick run: 600 images, 1 epoch, SmallResNet(16, 32, 64), 1 seed; the full benchmark" in printed
    lines = printed.rstrip().splitlines()
    assert lines[-2] == f"plots: {tmp_path / 'quick'}_curves.png, {tmp_path / 'quick'}_frontier.png"
    assert lines[-1].startswith("verdict at keep 0.5: eps-greedy ") and "quick run" in lines[-1]
    result = json.loads(out.read_text())
    assert result["mode"]["quick"] and result["model"]["widths"] == [16, 32, 64]
    assert [run["strategy"] for run in result["runs"]] == ["full", "epsilon_greedy"]
    assert (tmp_path / "quick_curves.png").exists()
    assert "(quick run, `--quick`)" in out.with_suffix(".md").read_text()

    # a second run finds the stores verified and does not convert again
    assert main_job.main(["--data-dir", str(data), "--bench", *bench]) == 0
    assert "fashion-mnist-train.beton: present and verified, not reconverted" in capsys.readouterr().out
