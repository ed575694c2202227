"""Bring your own data and model: `fastprune train` and `bench` on any image-classification store,
with a model from the user's own module, and `fastprune.bench.compare` from Python.

The acceptance test walks a newcomer's path: a 12-class folder of images of mixed sizes, a tiny
CNN in their own module, convert -> train -> bench (CLI, from their folder) -> compare (Python).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import fastprune
from fastprune.cli import main
from fastprune.convert import from_arrays
from fastprune.store import IntField, RGBImageField

CLASSES = 12
TINY_MODEL = """
from torch import nn

def make(num_classes):
    return nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, num_classes))

def not_a_model(num_classes):
    return "a string"

NOT_CALLABLE = 3
"""
FAST = ["--threads", "1", "--amp", "off", "--batch-size", "32"]


def _image_folder(root: Path, per_class: int, seed: int) -> Path:
    """``CLASSES`` class folders of PNGs and JPEGs of varied sizes; each class has its own colour."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for label in range(CLASSES):
        folder = root / f"class_{label:02d}"
        folder.mkdir(parents=True)
        colour = np.array([label * 21, 255 - label * 21, (label % 3) * 120])
        for i in range(per_class):
            height, width = rng.integers(20, 70, 2)
            pixels = np.clip(colour + rng.integers(-30, 30, (height, width, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.{'png' if i % 2 else 'jpg'}")
    return root


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """The user's own model module, importable in this process (its name is unique per test)."""
    name = f"user_models_{os.getpid()}_{abs(hash(str(tmp_path))) % 10**8}"
    (tmp_path / f"{name}.py").write_text(TINY_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_newcomer_brings_a_12_class_image_folder_and_a_model(tmp_path, user_module, monkeypatch):
    # 1. convert their folders (mixed sizes, PNG and JPEG) to JPEG stores
    stores = {}
    for split, per_class in (("train", 8), ("val", 2)):
        folder = _image_folder(tmp_path / "photos" / split, per_class, seed=len(split))
        stores[split] = tmp_path / f"{split}.beton"
        assert main(["convert", str(folder), "--jpeg", "--max-side", "48", "--out", str(stores[split]),
                     "--no-progress", "--workers", "1"]) == 0
    with fastprune.Store(stores["train"]) as store:
        assert len(store) == 96 and sorted({int(store[i][1]) for i in range(len(store))}) == list(range(CLASSES))

    # 2. train their model with pruning, crops for the mixed sizes, typed logs
    log_json, log_csv, checkpoint = tmp_path / "run.json", tmp_path / "run.csv", tmp_path / "run.pt"
    assert main(["train", "--train", str(stores["train"]), "--val", str(stores["val"]), "--strategy", "ucb",
                 "--crop", "32", "--model", f"{user_module}:make", "--epochs", "2", "--no-progress",
                 "--log-json", str(log_json), "--log-csv", str(log_csv), "--checkpoint", str(checkpoint),
                 *FAST]) == 0
    state = fastprune.train.read_checkpoint(checkpoint)["model"]
    assert state["4.weight"].shape == (CLASSES, 8)  # the head the store's 12 classes asked for
    logged = json.loads(log_json.read_text())
    arguments = logged["arguments"]
    assert arguments["epochs"] == 2 and arguments["crop"] == 32 and arguments["keep"] == 0.5
    assert arguments["train"] == str(stores["train"]) and arguments["mean"] is None
    assert arguments["resume"] is False and arguments["model"] == f"{user_module}:make"
    assert logged["data"]["classes"] == CLASSES and logged["data"]["image_size"].startswith("mixed")
    assert [r["epoch"] for r in logged["history"]] == [0, 1]
    with open(log_csv, newline="") as file:
        rows = list(csv.DictReader(file))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert [float(r["val_acc"]) for r in rows] == [r["val_acc"] for r in logged["history"]]
    assert {"loss", "samples", "epoch_s", "cumulative_s"} <= set(rows[0])

    # 3. the comparison from the command line, run from their folder: the console script imports
    # their module from there, and --out is relative to it
    fastprune_script = Path(sys.executable).with_name("fastprune")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [str(fastprune_script), "bench", "--train", "train.beton", "--val", "val.beton", "--crop", "32",
         "--model", f"{user_module}:make", "--epochs", "1", "--strategies", "epsilon_greedy", "ucb",
         "--keeps", "0.5", "--seeds", "0", "--out", "results/mine.json", *FAST],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    out = tmp_path / "results" / "mine.json"
    bench = json.loads(out.read_text())
    assert bench["data"]["classes"] == CLASSES and bench["data"]["train"] == str(stores["train"])
    assert bench["model"]["name"] == f"{user_module}:make" and bench["recipe"]["crop"] == 32
    report = out.with_suffix(".md").read_text()
    assert report.startswith("# End-to-end: train.beton, 1 epoch\n")
    for strategy in ("full | 1.0", "epsilon_greedy | 0.5", "ucb | 0.5"):
        assert f"| {strategy} |" in report and f"| {strategy} |" in result.stdout
    with open(tmp_path / "results" / "mine_epochs.csv", newline="") as file:
        assert [row["strategy"] for row in csv.DictReader(file)] == ["full", "epsilon_greedy", "ucb"]

    # 4. the same comparison from Python, which leaves the caller's random streams as they were
    import random
    random.seed(7)
    np.random.seed(7)
    torch.manual_seed(7)
    comparison = fastprune.bench.compare(stores["train"], stores["val"], model=f"{user_module}:make",
                                         epochs=1, crop=32, threads=1, amp="off", batch_size=32)
    after = (random.random(), np.random.random(), torch.rand(1).item())
    random.seed(7)
    np.random.seed(7)
    torch.manual_seed(7)
    assert after == (random.random(), np.random.random(), torch.rand(1).item())
    assert len(repr(comparison)) < 300 and repr(comparison).startswith("Comparison(3 runs; full@1.0: ")
    assert [(row["strategy"], row["keep"]) for row in comparison.rows] == [
        ("full", 1.0), ("epsilon_greedy", 0.5), ("ucb", 0.5)]
    assert comparison.row("full")["speedup"] == pytest.approx(1.0)
    assert all(row["wall_s_mean"] > 0 and 0 <= row["acc_mean"] <= 100 for row in comparison.rows)
    table, *notes = comparison.table().split("\n\n")  # the table, then its notes
    table = table.splitlines()
    assert table[0].startswith("| strategy | keep | acc %") and len(table) == 2 + 3
    assert table[4].startswith("| ucb | 0.5 | ")
    # runs of well under a second each: a busy machine's timing note may follow (CI ran one), nothing else
    assert all(note.startswith("note: the runs") and "the machine was busy" in note for note in notes), notes
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".json") == ["run.json"]  # out=None


@pytest.fixture
def twelve_class_stores(tmp_path):
    """12-class 32x32 raw stores (labels 0..11): the case that used to end in 'Target 10 is out of bounds'."""
    rng = np.random.default_rng(0)
    labels = np.arange(96) % CLASSES
    images = rng.integers(0, 255, (96, 32, 32, 3), np.uint8)
    train = from_arrays(images, labels, tmp_path / "train.beton", progress=False, workers=1)
    val = from_arrays(images[:24], labels[:24], tmp_path / "val.beton", progress=False, workers=1)
    return train, val, images


def _train_args(train, val, *extra):
    return ["train", "--train", str(train), "--val", str(val), "--epochs", "1", "--width", "4",
            "--no-progress", *FAST, *extra]


def test_classes_and_statistics_come_from_the_training_store(twelve_class_stores, capsys):
    from fastprune.train import describe_stores

    train, val, images = twelve_class_stores
    data = describe_stores(train, val)
    assert data.num_classes == CLASSES and data.channels == 3 and data.image_size == "32x32"
    # 96 images < the sample size: the statistics are those of every pixel
    pixels = images.reshape(-1, 3) / 255
    np.testing.assert_allclose(data.mean, pixels.mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(data.std, pixels.std(axis=0), rtol=1e-9)
    given = describe_stores(train, val, mean=(0.1, 0.2, 0.3), std=(1, 1, 1))
    assert given.mean == (0.1, 0.2, 0.3) and given.std == (1.0, 1.0, 1.0)
    assert main(_train_args(train, val)) == 0
    assert f"{train}: 12 classes, images 32x32" in capsys.readouterr().out


def test_stores_that_do_not_fit_fail_in_one_line_naming_the_fix(twelve_class_stores, tmp_path, capsys):
    train, val, images = twelve_class_stores
    more_classes = from_arrays(images[:20], np.arange(20), tmp_path / "twenty.beton", progress=False, workers=1)
    mixed = _image_folder(tmp_path / "mixed", 1, seed=0)
    mixed_store = tmp_path / "mixed.beton"
    coarse_fine = fastprune.write_dataset(  # two label fields, neither 'label': as ffcv users write them
        tmp_path / "cf.beton", [(images[i], i % 2, i % 4) for i in range(8)],
        {"image": RGBImageField(), "coarse": IntField(), "fine": IntField()}, workers=1, progress=False)
    unlabelled = fastprune.write_dataset(tmp_path / "u.beton", [(images[i],) for i in range(8)],
                                         {"image": RGBImageField()}, workers=1, progress=False)
    assert main(["convert", str(mixed), "--jpeg", "--out", str(mixed_store), "--no-progress", "--workers", "1"]) == 0
    capsys.readouterr()
    cases = [
        (_train_args(train, more_classes), "label 19, but the training store"),
        (_train_args(mixed_store, mixed_store), "differ in size (mixed, "),
        (_train_args(mixed_store, mixed_store), "give --crop N (crop=N in Python)"),
        (_train_args(train, val, "--mean", "0.5", "0.5", "0.5"), "give both --mean and --std"),
        (_train_args(coarse_fine, val), "no label field (an integer field named 'label', or the only integer field "
                                        "other than 'index'); name one of coarse, fine with --label-field "
                                        "(label_field= in Python)"),
        (_train_args(unlabelled, val), "convert it with labels (fastprune convert writes 'label')"),
        (_train_args(train, val, "--model", "no_such_module_here:make"), "cannot import 'no_such_module_here'"),
    ]
    for arguments, message in cases:
        assert main(arguments) == 1
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_label_field_trains_on_a_store_whose_labels_are_not_named_label(twelve_class_stores, tmp_path, capsys):
    """ffcv users' stores name their label fields as they like (coarse/fine): --label-field picks
    one for the classes, the Loaders and the checkpoint's settings."""
    train, val, images = twelve_class_stores
    fields = {"image": RGBImageField(), "coarse": IntField(), "fine": IntField()}
    stores = [fastprune.write_dataset(tmp_path / f"{name}.beton", [(images[i], i % 2, i % 4) for i in range(48)],
                                      fields, workers=1, progress=False) for name in ("cf-train", "cf-val")]
    log = tmp_path / "log.json"
    assert main(_train_args(*stores, "--label-field", "fine", "--checkpoint", str(tmp_path / "c.pt"), "--log-json",
                            str(log), "--batch-size", "8")) == 0
    out, err = capsys.readouterr()
    assert f"{stores[0]}: 4 classes (field 'fine')" in out
    assert "no labels" not in err  # the Loader's 'name one as the label_field' was printed though it was named
    scores = tmp_path / "s.csv"  # the checkpoint's label field labels the rows
    assert main(["scores", str(tmp_path / "c.pt"), "--store", str(stores[0]), "--out", str(scores),
                 "--grid", str(tmp_path / "g.png")]) == 0
    rows = list(csv.DictReader(scores.open()))
    assert sorted({row["label"] for row in rows}) == ["0", "1", "2", "3"]
    assert all(int(row["label"]) == int(row["index"]) % 4 for row in rows)
    assert (tmp_path / "g.png").stat().st_size > 0  # its rows are the 4 fine classes (it stopped: no 'label')
    from fastprune.errors import ConfigError
    from fastprune.prune import export_scores

    with pytest.raises(ConfigError, match="label_field='coarse', but the run trained on 'fine'"):
        export_scores(tmp_path / "c.pt", tmp_path / "s2.csv", store=stores[0], label_field="coarse")
    report = fastprune.prune.report.report_of(tmp_path / "c.pt")
    with pytest.raises(ConfigError, match=r"cf-train\.beton: the store has no label field; name one of coarse, "
                                          r"fine with label_field= \(--label-field\)$"):
        export_scores(report, tmp_path / "s2.csv", store=stores[0])
    assert json.loads(log.read_text())["history"][0]["val_class_acc"].keys() == {"0", "1", "2", "3"}
    assert torch.load(tmp_path / "c.pt", weights_only=True)["settings"]["label_field"] == "fine"
    assert main(_train_args(*stores, "--label-field", "coarse", "--checkpoint", str(tmp_path / "c.pt"), "--resume",
                            "--epochs", "2", "--batch-size", "8")) == 1
    assert "label_field='fine' in the checkpoint, 'coarse' now" in capsys.readouterr().err
    assert main(_train_args(*stores, "--label-field", "nope")) == 1
    assert "label_field='nope'" in capsys.readouterr().err


def test_user_models_are_checked_before_any_work(user_module, twelve_class_stores, capsys):
    from fastprune.models import build_model

    train, val, _ = twelve_class_stores
    for spec, message in ((f"{user_module}:missing", "has no 'missing'"),
                          (f"{user_module}:NOT_CALLABLE", "is a int, not a callable"),
                          (f"{user_module}:not_a_model", "returned a str, not a torch.nn.Module")):
        assert main(_train_args(train, val, "--model", spec)) == 1
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert build_model(f"{user_module}:make", num_classes=5)(torch.zeros(1, 3, 8, 8)).shape == (1, 5)
    with pytest.raises(SystemExit):  # neither a built-in name nor MODULE:CALLABLE
        main(_train_args(train, val, "--model", "resnet50"))
    assert "expected small_resnet, resnet18 or MODULE:CALLABLE" in capsys.readouterr().err


def test_resume_refuses_another_model_spec_or_crop(user_module, twelve_class_stores, tmp_path, capsys):
    train, val, _ = twelve_class_stores
    checkpoint = tmp_path / "run.pt"
    common = _train_args(train, val, "--checkpoint", str(checkpoint), "--resume")
    assert main([*common, "--model", f"{user_module}:make"]) == 0
    saved = fastprune.train.read_checkpoint(checkpoint)["settings"]
    assert saved["model_spec"] == f"{user_module}:make" and saved["num_classes"] == CLASSES
    assert saved["mean"] == pytest.approx(list(fastprune.train.describe_stores(train, val).mean))
    capsys.readouterr()
    assert main([*common, "--model", f"{user_module}:make"]) == 0  # same settings: nothing left
    assert "nothing left to train" in capsys.readouterr().out
    for changed, name in ((["--model", "small_resnet"], "model_spec="), (["--model", f"{user_module}:make",
                                                                          "--crop", "24"], "crop=")):
        assert main([*common, *changed]) == 1
        assert name in capsys.readouterr().err


def test_bench_takes_both_stores_or_neither(twelve_class_stores, capsys):
    from fastprune.bench import cli

    train, _, _ = twelve_class_stores
    with pytest.raises(fastprune.errors.UsageError, match="give both --train and --val"):
        cli.main(["--train", str(train), *FAST])
    with pytest.raises(fastprune.errors.UsageError, match="--train-limit applies to the built-in Fashion-MNIST only"):
        cli.main(["--train", str(train), "--val", str(train), "--train-limit", "10", *FAST])


def test_compare_checks_its_arguments(twelve_class_stores):
    train, val, _ = twelve_class_stores
    with pytest.raises(TypeError, match="unknown recipe options \\['learning_rate'\\]"):
        fastprune.bench.compare(train, val, learning_rate=0.1)
    with pytest.raises(ValueError, match="unknown strategies \\['ucbb'\\]"):
        fastprune.bench.compare(train, val, strategies=("full", "ucbb"))


def test_per_sample_loss_mistakes_name_reduction_none(twelve_class_stores):
    from fastprune import UCB, Loader
    from fastprune.loader import Normalize
    from fastprune.train import fit

    train, val, _ = twelve_class_stores
    strategy = UCB(96, keep=0.5, seed=0)
    with pytest.raises(ValueError, match=r"losses must be 1-D \(one value per sample; use reduction='none'"):
        strategy.update(torch.arange(4), torch.tensor(1.5))
    # a multi-label or per-pixel loss is already reduction='none': say how to make it per sample
    with pytest.raises(ValueError, match=r"reduce any other dimensions per sample, e.g. loss.flatten\(1\).mean\(1\)"
                                         r"\), got shape \(4, 5\)"):
        strategy.update(torch.arange(4), torch.ones(4, 5))
    with pytest.raises(ValueError, match="losses has 1 entries but indices has 4: .*reduction='none'"):
        strategy.update(torch.arange(4), torch.tensor([1.5]))

    loader = Loader(train, 32, sampler=strategy, transforms=[Normalize()], threads=1)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(32 * 32 * 3, CLASSES))
    with pytest.raises(ValueError, match=r"reduction='mean'.*use CrossEntropyLoss\(reduction='none'\)"):
        fit(model, loader, None, strategy, 1, criterion=torch.nn.CrossEntropyLoss(), progress=False, log=None)

    def mean_loss(logits, labels):  # a plain function: no reduction attribute to look at
        return torch.nn.functional.cross_entropy(logits, labels)

    with pytest.raises(ValueError, match=r"loss of shape \(\) for a batch of 32.*reduction='none'"):
        fit(model, loader, None, strategy, 1, criterion=mean_loss, progress=False, log=None)


def test_wrong_field_names_list_the_store_fields(twelve_class_stores):
    from fastprune import Loader

    train, _, _ = twelve_class_stores
    with pytest.raises(ValueError, match=r"image_field='img' is not an RGB image field .*\['image', 'label'\]"):
        Loader(train, 8, image_field="img")
    with pytest.raises(ValueError, match=r"label_field='target' is not an int, float or array field of this "
                                         r"store \(fields: image "
                                         r"\(RGBImageField\), label \(IntField\)\)"):
        Loader(train, 8, label_field="target")


# ---- a newcomer's audit (2026-12-06) ------------------------------------------------------------

def test_statistics_in_0_255_units_are_refused_naming_the_command_lines_form(twelve_class_stores, capsys):
    train, val, _ = twelve_class_stores
    assert main(_train_args(train, val, "--mean", "124", "116", "104", "--std", "58", "57", "57")) == 1
    err = capsys.readouterr().err
    assert "--mean 0.4863 0.4549 0.4078 --std 0.2275 0.2235 0.2235" in err and err.count("\n") == 1, err
    # only the list in 0-255 units is converted: a mean already in fractions stays as it is
    assert main(_train_args(train, val, "--mean", "0.485", "0.456", "0.406", "--std", "58", "57", "57")) == 1
    assert "--mean 0.485 0.456 0.406 --std 0.2275 0.2235 0.2235" in capsys.readouterr().err


def test_a_model_asserting_its_input_size_fails_in_one_line(twelve_class_stores):
    from fastprune.errors import ConfigError
    from fastprune.loader import Normalize
    from fastprune.train import fit

    class SizeChecked(torch.nn.Module):  # as torchvision's ViT: assert h == self.image_size
        def __init__(self):
            super().__init__()
            self.head = torch.nn.Linear(3, CLASSES)

        def forward(self, x):
            assert x.shape[-1] == 224, f"Wrong image width! Expected 224 but got {x.shape[-1]}!"
            return self.head(x.mean((2, 3)))

    train, val, _ = twelve_class_stores
    loader = fastprune.Loader(train, 8, threads=1, transforms=[Normalize()])
    with pytest.raises(ConfigError, match=r"fit: the model fails on the first batch \(images \(8, 3, 32, 32\), "
                                          r"float32\): Wrong image width! Expected 224 but got 32!"):
        fit(SizeChecked(), loader, None, epochs=1, progress=False, log=None)


def test_compare_shows_the_caveats_bench_prints_under_its_table():
    from fastprune.bench import report
    from fastprune.bench.comparison import Comparison

    # a busy machine: full data took 13.5 s for 12k samples, UCB 0.5 s for 6k (26.9x "faster")
    runs = [{"strategy": "full", "keep": 1.0, "seed": 0, "block": 0.5, "wall_s": 13.5, "samples_seen": 12000,
             "final_acc": 86.0, "eval_s": 0.1, "scoring_s": 0.0, "pruning_overhead_s": 0.0, "curve": [[13.5, 86.0]]},
            {"strategy": "ucb", "keep": 0.5, "seed": 0, "block": 0.5, "wall_s": 0.5, "samples_seen": 6000,
             "final_acc": 86.0, "eval_s": 0.1, "scoring_s": 0.0, "pruning_overhead_s": 0.0, "curve": [[0.5, 86.0]]}]
    comparison = Comparison({"runs": runs, "summary": report.summarize(runs)})
    assert len(comparison.notes) == 1 and comparison.notes[0].startswith("note: the runs spent up to 13.5x")
    assert comparison.table().endswith(comparison.notes[0])
    assert "1 note(s) in .notes, e.g. a busy machine" in repr(comparison)
    alike = [runs[0], {**runs[1], "wall_s": 7.0}]
    assert Comparison({"runs": alike, "summary": report.summarize(alike)}).notes == []


def test_images_in_the_root_of_an_image_folder_are_said_to_be_left_out(tmp_path):
    from PIL import Image

    from fastprune.convert.image_folder import scan_image_folder
    from fastprune.errors import SourceWarning

    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / name / "a.png")
    (tmp_path / "LICENSE.txt").write_text("not an image: no word")
    scan_image_folder(tmp_path)  # no warning (pytest's filterwarnings: none expected is checked below)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "stray.jpg")
    with pytest.warns(SourceWarning, match=r"1 image file lies in the root, in no class folder, and is left out "
                                           r"\(e.g. stray.jpg\)"):
        paths, _, _ = scan_image_folder(tmp_path)
    assert len(paths) == 2
