"""``fastprune train`` / ``bench`` on a user's data: the effective recipe is printed, defaults show
in --help, and a recipe that would take too few steps per epoch is warned about (issue 34.3)."""

from __future__ import annotations

import numpy as np
import pytest

import fastprune

from fastprune.cli import main
from fastprune.convert import from_arrays
from fastprune.train.recipe import RECIPE, few_steps_warning, recipe_warnings


def test_few_steps_per_epoch_are_warned_about_with_the_flag_to_change():
    line = few_steps_warning(RECIPE, 240, 0.5)  # the recipe's batch 512 on 120 kept images: one step
    assert line and "1 optimizer step of batch 512" in line and "--batch-size 12 or less" in line
    assert "\n" not in line
    assert few_steps_warning(RECIPE, 60000, 0.5) is None                       # 59 steps
    assert few_steps_warning(RECIPE.replace(batch_size=64), 2000, 0.3) is None  # 600 kept: 10 steps
    assert few_steps_warning(RECIPE.replace(batch_size=64), 2000, 0.25) is not None  # 500 kept: 8 steps


def test_help_shows_the_recipes_defaults(capsys):
    for command in ("train", "bench"):
        try:
            main([command, "--help"])
        except SystemExit:
            pass
        text = " ".join(capsys.readouterr().out.split())
        assert "(default: 512)" in text and "(default: 1.2)" in text and "(default: 0.0005)" in text, command
        if command == "bench":  # the mode's defaults, which were "default by mode"; the width, which was none
            assert "keep ratios (default: 0.3 0.5 0.7; --quick: 0.5)" in text
            assert "seeds (default: 0 1 2; --quick: 0)" in text and "(doubled per stage) (default: 32; --quick: 16)" in text
            assert "one per pruned run, PNG's name + -STRATEGY-keepK-seedS" in text


def test_train_prints_its_recipe_and_warns_on_a_small_store(tmp_path, capsys):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (240, 8, 8, 3), dtype=np.uint8)
    train = from_arrays(images, np.arange(240) % 2, tmp_path / "train.beton", progress=False)
    assert main(["train", "--train", str(train), "--val", str(train), "--epochs", "1", "--width", "4",
                 "--no-progress", "--threads", "1"]) == 0
    out = capsys.readouterr()
    assert "recipe: 1 epoch, batch 512 (--batch-size), one-cycle SGD to peak lr 1.2" in out.out
    assert "model small_resnet(4, 8, 16)" in out.out
    assert ("warning: at keep 0.5 an epoch trains 120 of 240 samples in 1 optimizer step of batch 512; pass "
            "--batch-size 12 or less for at least 10 steps per epoch") in out.out
    assert f"warning: --val {train} is the training store: its accuracy is on images the model trains on" in out.out
    (tmp_path / "val.beton").symlink_to(train)  # the same file by another name is the same store
    val = from_arrays(images[:24], np.arange(24) % 2, tmp_path / "held_out.beton", progress=False)
    assert "is the training store" in " ".join(recipe_warnings(RECIPE, train, 0.5, val_store=tmp_path / "val.beton"))
    assert "is the training store" not in " ".join(recipe_warnings(RECIPE, train, 0.5, val_store=val))


def test_a_keep_that_keeps_no_sample_is_one_line_before_any_work(tmp_path, capsys):
    """keep 0.1 of 3 samples rounds to none: the strategy refused it after the warm-up epochs, in a
    traceback (a plain ValueError), and bench after its full-data run; and the few-steps warning
    had rounded the same count up to 1."""
    images = np.zeros((3, 8, 8, 3), np.uint8)
    train = from_arrays(images, np.arange(3) % 2, tmp_path / "train.beton", progress=False)
    assert main(["train", "--train", str(train), "--val", str(train), "--keep", "0.1", "--epochs", "1",
                 "--no-progress"]) == 1
    out = capsys.readouterr()
    assert out.err == f"fastprune train: error: --keep 0.1 keeps no sample of the 3 in {train}: give a larger --keep\n"
    assert "epoch 1/1" not in out.out
    assert main(["bench", "--train", str(train), "--val", str(train), "--keeps", "0.1", "0.9", "--epochs", "1",
                 "--seeds", "0", "--strategies", "ucb", "--out", str(tmp_path / "b.json")]) == 1
    assert "--keeps 0.1 keeps no sample of the 3" in capsys.readouterr().err
    assert not (tmp_path / "b.json").exists()
    assert main(["train", "--train", str(train), "--val", str(train), "--keep", "0.7", "--epochs", "1",
                 "--no-progress", "--threads", "1"]) == 0  # 2 of 3, in 1 step: no batch makes 10
    assert ("trains 2 of 3 samples in 1 optimizer step of batch 512; even --batch-size 1 would take only 2 steps"
            in capsys.readouterr().out)
    with pytest.raises(fastprune.errors.ConfigError, match="keep=0.1 keeps no sample out of 3"):
        fastprune.UCB(3, keep=0.1)


def test_compile_reaches_the_training_loop_from_train_bench_and_compare(tmp_path, monkeypatch):
    """--compile / compare(compile=) arrive at run_recipe as fit's compile= (False for "off")."""
    import pytest

    import fastprune.bench.run as bench_run
    import fastprune.train.cli as train_cli
    from fastprune.bench import compare

    class Stop(BaseException):
        """Ends the command right there: only the argument matters."""

    seen = []

    def fake_run_recipe(*args, **kwargs):
        seen.append(kwargs.get("compile"))
        raise Stop

    monkeypatch.setattr(train_cli, "run_recipe", fake_run_recipe)
    monkeypatch.setattr(bench_run, "run_recipe", fake_run_recipe)
    rng = np.random.default_rng(0)
    train = from_arrays(rng.integers(0, 256, (64, 8, 8, 3), dtype=np.uint8), np.arange(64) % 2,
                        tmp_path / "t.beton", progress=False)
    for mode, expected in (("off", False), ("reduce-overhead", "reduce-overhead")):
        with pytest.raises(Stop):
            main(["train", "--train", str(train), "--val", str(train), "--compile", mode, "--no-progress"])
        assert seen[-1] == expected
    with pytest.raises(Stop):
        compare(train, train, compile="default", epochs=1)
    assert seen[-1] == "default"
    import fastprune  # the quick start's Store objects, not only paths (was a TypeError deep in pathlib)
    with pytest.raises(Stop):
        compare(fastprune.Store(train), fastprune.Store(train), compile=True, epochs=1)
    assert seen[-1] == "default"
    with pytest.raises(TypeError, match="^compare\\(\\): train and val must be store paths or fastprune.Store objects, got int"):
        compare(3, train, epochs=1)
    with pytest.raises(ValueError, match="compile must be one of"):
        compare(train, train, compile="fast", epochs=1)
    with pytest.raises(SystemExit):
        main(["train", "--train", str(train), "--val", str(train), "--compile", "fast"])


def test_running_out_of_memory_is_one_line_naming_the_options_that_fix_it(tmp_path, monkeypatch, capsys):
    """A batch too large for the GPU or a model too wide for the host printed torch's traceback;
    train and bench now print one line: what failed to allocate, and --batch-size / --model."""
    import pytest

    (tmp_path / "hungry.py").write_text('''
import torch

def too_wide(num_classes):
    torch.empty(2**62, dtype=torch.uint8)  # the CPU allocator refuses 4 EiB, whatever the machine

class RaisesInForward(torch.nn.Module):
    def __init__(self, error):
        super().__init__()
        self.linear, self.error = torch.nn.Linear(1, 1), error

    def forward(self, images):
        raise self.error

def gpu_full(num_classes):  # torch's CUDA message, as a GPU machine raises it
    return RaisesInForward(torch.OutOfMemoryError(
        "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 139.80 GiB of which "
        "1.10 GiB is free. Of the allocated memory 130.00 GiB is allocated by PyTorch"))

def buggy(num_classes):  # a bug in the user's builder: not about memory
    raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (8x192 and 3x4)")
''')
    monkeypatch.syspath_prepend(str(tmp_path))
    rng = np.random.default_rng(0)
    store = from_arrays(rng.integers(0, 256, (64, 8, 8, 3), dtype=np.uint8), np.arange(64) % 2,
                        tmp_path / "s.beton", progress=False)
    train = ["train", "--train", str(store), "--val", str(store), "--epochs", "1", "--no-progress",
             "--threads", "1", "--batch-size", "16"]
    bench = ["bench", "--train", str(store), "--val", str(store), "--strategies", "ucb", "--keeps", "0.5",
             "--seeds", "0", "--epochs", "1", "--threads", "1", "--batch-size", "16", "--out",
             str(tmp_path / "bench" / "result.json")]
    for command, model, tried in ((train, "hungry:too_wide", "4294967296.0 GiB"), (train, "hungry:gpu_full", "2.00 GiB"),
                                  (bench, "hungry:gpu_full", "2.00 GiB")):
        assert main([*command, "--model", model]) == 1
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert error == (f"fastprune {command[0]}: error: out of memory on cpu: tried to allocate {tried}; lower "
                         "--batch-size (now 16), or use a smaller model (--model, --width) or images (--crop)")
    with pytest.raises(RuntimeError, match="mat1 and mat2"):  # not about memory: a bug, shown in full
        main([*train, "--model", "hungry:buggy"])


def test_train_with_benchs_execution_settings_trains_a_bench_runs_seed_alike(tmp_path):
    """bench trains with channels-last, denormals flushed and its thread count; train's defaults
    differ, so a bench run's seed could not be reproduced with train: these flags do it."""
    import json

    from fastprune.bench import compare

    rng = np.random.default_rng(0)
    train = from_arrays(rng.integers(0, 256, (256, 12, 12, 3), dtype=np.uint8), np.arange(256) % 4,
                        tmp_path / "train.beton", progress=False)
    val = from_arrays(rng.integers(0, 256, (64, 12, 12, 3), dtype=np.uint8), np.arange(64) % 4,
                      tmp_path / "val.beton", progress=False)
    recipe = {"widths": (8, 16, 32), "batch_size": 32, "lr": 0.2}
    comparison = compare(train, val, strategies=("ucb",), epochs=2, seeds=(0,), threads=1, **recipe)
    bench_run = next(run for run in comparison.runs if run["strategy"] == "ucb")
    assert main(["train", "--train", str(train), "--val", str(val), "--strategy", "ucb", "--epochs", "2",
                 "--width", "8", "--batch-size", "32", "--lr", "0.2", "--threads", "1", "--no-progress",
                 "--channels-last", "on", "--flush-denormal", "--log-json", str(tmp_path / "run.json")]) == 0
    history = json.loads((tmp_path / "run.json").read_text())["history"]
    assert [(r["loss"], r["val_acc"]) for r in history] == [(r["loss"], r["val_acc"]) for r in bench_run["history"]]


def test_a_crop_larger_than_every_image_is_warned_about(tmp_path, capsys):
    """--crop 160 on a store converted with --max-side 128 trained on upscaled images, silently."""
    from fastprune.train.recipe import upscale_warning

    heights, widths = np.array([96, 128, 120]), np.array([128, 100, 140])
    line = upscale_warning(160, heights, widths)
    assert line == ("warning: --crop 160 is larger than every training image (the largest is 120 px on its shorter "
                    "side): each is upscaled; --crop 120 or less keeps to the stored detail (or convert with a "
                    "larger --max-side)")
    assert upscale_warning(120, heights, widths) is None and upscale_warning(None, heights, widths) is None
    printed = _one_epoch_printed(tmp_path, capsys, count=64, side=8, crop=12)
    assert "warning: --crop 12 is larger than every training image (the largest is 8 px" in printed


def _one_epoch_printed(tmp_path, capsys, count: int, side: int, crop: int) -> str:
    """What `fastprune train` prints over ``count`` random images of ``side`` px at ``--crop``."""
    rng = np.random.default_rng(0)
    train = from_arrays(rng.integers(0, 256, (count, side, side, 3), dtype=np.uint8), np.arange(count) % 2,
                        tmp_path / "train.beton", progress=False)
    assert main(["train", "--train", str(train), "--val", str(train), "--epochs", "1", "--width", "8", "--crop",
                 str(crop), "--batch-size", "8", "--no-progress", "--threads", "1"]) == 0
    return capsys.readouterr().out


def test_images_far_larger_than_the_crop_are_warned_about(tmp_path, capsys):
    """Camera-size photos stored whole and trained at --crop 64 or 224 loaded 38-54x slower than
    the same photos kept at 256 px, and nothing said so (a performance audit)."""
    from fastprune.train.recipe import oversize_warning

    heights, widths = np.array([2000, 1500, 3000]), np.array([3000, 2000, 2000])
    assert oversize_warning(224, heights, widths) == (
        "warning: the training images are 9x --crop 224 (median shorter side 2000 px): each is read far larger than "
        "the model's input, which makes loading several times slower than needed; store them at about 448 px "
        "(convert --max-side 448 for image folders and Hugging Face datasets)")
    assert oversize_warning(501, heights, widths) is None  # 4x and more only: ImageNet's ~400 px at 224 is fine
    assert oversize_warning(None, heights, widths) is None
    assert oversize_warning(8, np.array([40, 40]), np.array([40, 500])) is None  # small images: cheap whatever
    assert oversize_warning(32, np.array([480]), np.array([640])) is not None  # raw: 10.8x slower than at 64 px
    printed = _one_epoch_printed(tmp_path, capsys, count=16, side=520, crop=16)
    assert "warning: the training images are 32x --crop 16 (median shorter side 520 px)" in printed


def test_the_logs_keep_the_epochs_an_interrupted_run_finished_and_a_resume_completes_them(tmp_path, monkeypatch,
                                                                                           capsys):
    """--log-json and --log-csv were written only after the last epoch: Ctrl-C, a kill or a crash
    left none, while the checkpoint held every finished epoch."""
    import csv
    import json

    import fastprune.train.loop as loop

    rng = np.random.default_rng(0)
    train = from_arrays(rng.integers(0, 256, (64, 8, 8, 3), dtype=np.uint8), np.arange(64) % 2,
                        tmp_path / "train.beton", progress=False)
    files = {"json": tmp_path / "log.json", "csv": tmp_path / "log.csv", "pt": tmp_path / "run.pt"}
    arguments = ["train", "--train", str(train), "--val", str(train), "--epochs", "4", "--width", "4",
                 "--batch-size", "8", "--no-progress", "--threads", "1", "--log-json", str(files["json"]),
                 "--log-csv", str(files["csv"]), "--checkpoint", str(files["pt"])]
    real_epoch = loop._run_epoch

    def interrupted_at(stop):
        def run_epoch(epoch, *args, **kwargs):
            if epoch == stop:
                raise KeyboardInterrupt
            return real_epoch(epoch, *args, **kwargs)
        return run_epoch

    monkeypatch.setattr(loop, "_run_epoch", interrupted_at(2))
    assert main(arguments) == 130
    assert [r["epoch"] for r in json.loads(files["json"].read_text())["history"]] == [0, 1]
    with open(files["csv"]) as rows:
        assert [row["epoch"] for row in csv.DictReader(rows)] == ["0", "1"]
    monkeypatch.setattr(loop, "_run_epoch", interrupted_at(3))  # resumed, and stopped again: the logs hold
    assert main([*arguments, "--resume"]) == 130                  # the checkpoint's epochs and the new one
    assert [r["epoch"] for r in json.loads(files["json"].read_text())["history"]] == [0, 1, 2]
    monkeypatch.setattr(loop, "_run_epoch", real_epoch)
    assert main([*arguments, "--resume"]) == 0
    logged = json.loads(files["json"].read_text())
    assert [r["epoch"] for r in logged["history"]] == [0, 1, 2, 3] and logged["command"] == "fastprune train"
    with open(files["csv"]) as rows:
        assert [row["epoch"] for row in csv.DictReader(rows)] == ["0", "1", "2", "3"]
