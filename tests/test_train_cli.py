"""``fastprune train`` / ``bench`` on a user's data: the effective recipe is printed, defaults show
in --help, and a recipe that would take too few steps per epoch is warned about (issue 34.3)."""

from __future__ import annotations

import numpy as np

from fastprune.cli import main
from fastprune.convert import from_arrays
from fastprune.train.recipe import RECIPE, few_steps_warning


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


def test_train_prints_its_recipe_and_warns_on_a_small_store(tmp_path, capsys):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (240, 8, 8, 3), dtype=np.uint8)
    train = from_arrays(images, np.arange(240) % 2, tmp_path / "train.beton", progress=False)
    assert main(["train", "--train", str(train), "--val", str(train), "--epochs", "1", "--width", "4",
                 "--no-progress", "--threads", "1"]) == 0
    out = capsys.readouterr()
    assert "recipe: 1 epochs, batch 512 (--batch-size), one-cycle SGD to peak lr 1.2" in out.out
    assert "model small_resnet(4, 8, 16)" in out.out
    assert "warning: at keep 0.5 an epoch trains 120 of 240 samples in 1 optimizer step" in out.out


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
    with pytest.raises(ValueError, match="compile must be one of"):
        compare(train, train, compile="fast", epochs=1)
    with pytest.raises(SystemExit):
        main(["train", "--train", str(train), "--val", str(train), "--compile", "fast"])
