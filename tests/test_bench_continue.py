"""What a result file of ``fastprune bench`` may hold (bench audit, 2026-12-06): --continue refuses
runs of other data at the same path, of a changed --model or of another --eval-every; a narrower
--continue still describes the runs it keeps; an existing --out is not replaced silently; keep
ratios print every digit; one seed shows no invented spread; a strategy that never pruned is said."""

from __future__ import annotations

import importlib
import json
import sys

import numpy as np
import pytest

from fastprune.bench import report
from fastprune.cli import main
from fastprune.convert import from_arrays

TINY_MODEL = ("import torch\n"
              "class Tiny(torch.nn.Module):\n"
              "    def __init__(self, num_classes):\n"
              "        super().__init__()\n"
              "        self.head = torch.nn.Linear(3 * 8 * 8, {hidden})\n"
              "        self.out = torch.nn.Linear({hidden}, num_classes)\n"
              "    def forward(self, x):\n"
              "        return self.out(self.head(x.flatten(1)))\n"
              "def make(num_classes):\n"
              "    return Tiny(num_classes)\n")


def _store(path, seed=0, n=48):
    rng = np.random.default_rng(seed)
    return from_arrays(rng.integers(0, 256, (n, 8, 8, 3), np.uint8), np.arange(n) % 2, path, progress=False)


@pytest.fixture
def bench(tmp_path, monkeypatch):
    """``bench(*args)``: fastprune bench on a tiny store with a tiny --model, into b.json."""
    (tmp_path / "continue_models.py").write_text(TINY_MODEL.format(hidden=4))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(sys.modules, "continue_models", None)  # undone after the test: the import goes too
    del sys.modules["continue_models"]
    _store(tmp_path / "t.beton")

    def run(*args):
        return main(["bench", "--train", "t.beton", "--val", "t.beton", "--strategies", "ucb", "--epochs", "2",
                     "--batch-size", "6", "--threads", "1", "--model", "continue_models:make", "--out", "b.json",
                     *args])
    return run


def test_continue_refuses_another_store_at_the_same_path_a_changed_model_and_another_eval_every(
        bench, tmp_path, monkeypatch, capsys):
    assert bench("--keeps", "0.5", "--seeds", "0") == 0
    before = (tmp_path / "b.json").read_text()
    assert json.loads(before)["data"]["train_identity"].startswith("48 samples, ")

    _store(tmp_path / "t.beton", seed=1)  # other images, same path and size
    assert bench("--keeps", "0.5", "--seeds", "0", "1", "--continue") == 1
    assert "data.train_identity = " in capsys.readouterr().err
    _store(tmp_path / "t.beton", seed=0)  # the same data again: accepted below

    (tmp_path / "continue_models.py").write_text(TINY_MODEL.format(hidden=16))  # edited between sessions
    del sys.modules["continue_models"]
    assert bench("--keeps", "0.5", "--seeds", "0", "1", "--continue") == 1
    assert "architecture = " in capsys.readouterr().err
    # an edited forward keeps the class and the parameter count (a docs audit: it was continued)
    (tmp_path / "continue_models.py").write_text(TINY_MODEL.format(hidden=4).replace(
        "self.out(self.head(x.flatten(1)))", "self.out(torch.relu(self.head(x.flatten(1))))"))
    del sys.modules["continue_models"]
    assert bench("--keeps", "0.5", "--seeds", "0", "1", "--continue") == 1
    assert ("measured with another version of the model: its source files differ (any edit to continue_models.py "
            "counts, comments included)") in capsys.readouterr().err
    (tmp_path / "continue_models.py").write_text(TINY_MODEL.format(hidden=4))
    del sys.modules["continue_models"]

    assert bench("--keeps", "0.5", "--seeds", "0", "1", "--eval-every", "2", "--continue") == 1
    assert "mode.eval_every = 1, this run has 2" in capsys.readouterr().err
    assert (tmp_path / "b.json").read_text() == before  # every refusal left the file as it was
    assert bench("--keeps", "0.5", "--seeds", "0", "1", "--continue") == 0
    assert len(json.loads((tmp_path / "b.json").read_text())["runs"]) == 4


def test_a_narrower_continue_still_describes_the_runs_it_keeps(bench, tmp_path):
    assert bench("--keeps", "0.25", "0.5", "--seeds", "0") == 0
    first = json.loads((tmp_path / "b.json").read_text())
    assert first["recipe"]["epochs"] == 2  # the run's, not the default's 10
    assert bench("--keeps", "0.5", "--seeds", "0", "1", "--continue") == 0
    result = json.loads((tmp_path / "b.json").read_text())
    assert result["mode"]["keeps"] == [0.25, 0.5] and result["mode"]["seeds"] == [0, 1]
    assert result["earlier_sessions"] == [{"command": first["command"], "date": first["date"]}]
    written = (tmp_path / "b.md").read_text()
    # the merged plan: 2 seeds x 2 keeps x (full, ucb); seed 1 never ran keep 0.25
    assert "**Partial: 6 of 8 planned runs**" in written
    assert f"Continued: runs from 2 sessions (`--continue`), the first on {first['date']}" in written
    assert "| ucb | 0.25 | " in written and "| ucb | 0.5 | " in written  # 0.25 printed as 0.2 before


def test_a_continue_with_nothing_left_to_run_remakes_the_files_beside_the_result(bench, tmp_path, monkeypatch):
    """A session stopped after its last run's JSON (Ctrl-C or a full disk while plotting) left the
    report, CSV and plots of fewer runs; --continue then had nothing to run and left them so for
    good (a failure-injection audit). It remakes them from the file, which it leaves as it is."""
    from fastprune.bench import cli as bench_cli

    real = bench_cli.write_companions
    calls = []

    def stopped_at_the_last(out, result):  # the last run's companions are never written
        calls.append(len(result["runs"]))
        if len(result["runs"]) == 4:
            raise KeyboardInterrupt
        return real(out, result)

    monkeypatch.setattr(bench_cli, "write_companions", stopped_at_the_last)
    assert bench("--keeps", "0.5", "--seeds", "0", "1") == 130
    result = (tmp_path / "b.json").read_text()
    assert len(json.loads(result)["runs"]) == 4
    assert len((tmp_path / "b_epochs.csv").read_text().splitlines()) == 1 + 3 * 2  # the first 3 runs'
    monkeypatch.setattr(bench_cli, "write_companions", real)
    assert bench("--keeps", "0.5", "--seeds", "0", "1", "--continue") == 0
    assert (tmp_path / "b.json").read_text() == result
    rows = (tmp_path / "b_epochs.csv").read_text().splitlines()
    assert len(rows) == 1 + 4 * 2  # a header, 2 epochs of each of the 4 runs
    assert "Partial" not in (tmp_path / "b.md").read_text()


def test_an_existing_out_is_replaced_only_when_asked(bench, tmp_path, capsys):
    assert bench("--keeps", "0.5", "--seeds", "0") == 0
    before = (tmp_path / "b.json").read_text()
    capsys.readouterr()
    assert bench("--keeps", "0.5", "--seeds", "1") == 1
    error = capsys.readouterr().err
    date = json.loads(before)["date"]
    assert error.startswith(f"fastprune bench: error: b.json exists (a result of 2 runs, {date}); "
                            "add --continue to run only the missing runs, --overwrite to replace it")
    assert (tmp_path / "b.json").read_text() == before
    assert bench("--keeps", "0.5", "--seeds", "1", "--overwrite") == 0
    assert [run["seed"] for run in json.loads((tmp_path / "b.json").read_text())["runs"]] == [1, 1]


def test_compare_refuses_an_existing_out_and_repeated_choices_before_any_work(tmp_path):
    from fastprune import ConfigError
    from fastprune.bench import compare

    store = _store(tmp_path / "t.beton")
    (tmp_path / "r.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"r.json exists; pass overwrite=True to replace it"):
        compare(store, store, out=tmp_path / "r.json")
    with pytest.raises(TypeError, match="compare\\(\\): overwrite must be True or False"):
        compare(store, store, out=tmp_path / "r.json", overwrite="yes")
    with pytest.raises(ValueError, match="compare\\(\\): seeds gives 0 twice; give each once"):
        compare(tmp_path / "missing.beton", tmp_path / "missing.beton", seeds=(0, 1, 0))
    with pytest.raises(ValueError, match="compare\\(\\): keeps gives 0.5 twice"):
        compare(tmp_path / "missing.beton", tmp_path / "missing.beton", keep=(0.5, 0.5))


@pytest.mark.parametrize("option, values, repeated", [
    ("--seeds", ["0", "0"], "0"), ("--keeps", ["0.5", "0.3", "0.5"], "0.5"), ("--strategies", ["ucb", "ucb"], "'ucb'")])
def test_bench_refuses_a_choice_given_twice(tmp_path, capsys, option, values, repeated):
    # a seed given twice ran twice and counted as 2 seeds (the std over one)
    with pytest.raises(SystemExit) as exit_:  # a usage error, as argparse's: exit 2
        main(["bench", "--train", "t.beton", "--val", "t.beton", option, *values, "--out", str(tmp_path / "b.json")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: fastprune bench") and err.endswith(
        f"fastprune bench: error: {option} gives {repeated} twice; give each once\n")
    assert not (tmp_path / "b.json").exists()


def test_a_strategy_that_never_pruned_is_said_and_its_warning_is_one_line(bench, tmp_path, capsys):
    # EL2N scores for 2 epochs by default: at --epochs 2 it trains on all data every epoch
    assert bench("--strategies", "el2n", "ucb", "--keeps", "0.5", "--seeds", "0") == 0
    said = capsys.readouterr()
    note = ("note: el2n at keep 0.5 trained on every sample in every epoch (its warm-up or scoring epochs cover "
            "the run): that row is full-data training, not pruning (with more epochs it prunes)")
    assert note in said.out.splitlines() and note in (tmp_path / "b.md").read_text()
    assert said.err.splitlines() == ["fastprune bench: warning: EL2N: warm-up/scoring (2) and final full (0) epochs "
                                     "cover all 2 epochs: it never prunes"]  # one line, no source lines


def test_keep_labels_and_one_seed_cells():
    assert [report.keep_label(k) for k in (0.5, 1.0, 0.25, 0.15, 0.333)] == ["0.5", "1.0", "0.25", "0.15", "0.333"]
    assert report.std([91.0]) is None and report.std([91.0, 93.0]) == pytest.approx(2 ** 0.5)
    row = {"strategy": "ucb", "keep": 0.25, "seeds": 1, "acc_mean": 91.0, "acc_std": None}
    assert report.accuracy_cell(row) == "91.00 (1 seed)"
    assert report.accuracy_cell({**row, "seeds": 2, "acc_std": 0.5}) == "91.00 ± 0.50"
    runs = [{"strategy": "full", "keep": 1.0, "samples_seen": 100},
            {"strategy": "ucb", "keep": 0.5, "samples_seen": 50},
            {"strategy": "forgetting", "keep": 0.25, "samples_seen": 100}]
    assert report.never_pruned_note(runs).startswith("note: forgetting at keep 0.25 trained on every sample")
    assert report.never_pruned_note(runs[:2]) == ""


def _layers(*modules):
    import torch

    return torch.nn.Sequential(*modules)


def test_model_code_tells_a_swapped_activation_and_a_models_own_code_and_not_a_rebuild(tmp_path, monkeypatch):
    """bench --continue compared only a model's class and parameter count: a ReLU swapped for a
    GELU, or an edited forward, merged runs of two models in one file (a docs audit)."""
    import functools

    import torch

    from fastprune.bench.run import model_code
    from fastprune.train.recipe import ModelSpec

    def code(factory, **spec):
        return model_code(factory(), ModelSpec(name="mine:make", factory=factory, **spec))

    relu = functools.partial(_layers, torch.nn.Linear(4, 4), torch.nn.ReLU())
    gelu = functools.partial(_layers, torch.nn.Linear(4, 4), torch.nn.GELU())
    assert code(relu)["layers"] != code(gelu)["layers"]  # the same class, the same parameters
    assert code(relu) == code(relu) and code(relu)["code"] is None  # torch's layers only: torch's version says it
    (tmp_path / "own_layers.py").write_text(TINY_MODEL.format(hidden=4))
    monkeypatch.syspath_prepend(str(tmp_path))
    own_layers = importlib.import_module("own_layers")  # written above (an import statement reads as a package)

    first = model_code(own_layers.make(2), ModelSpec(name="own_layers:make"))
    assert first["code"] is not None and first == model_code(own_layers.make(2), ModelSpec(name="own_layers:make"))
    (tmp_path / "own_layers.py").write_text(TINY_MODEL.format(hidden=4) + "# edited\n")
    assert model_code(own_layers.make(2), ModelSpec(name="own_layers:make"))["code"] != first["code"]
    builtin = ModelSpec()
    assert model_code(builtin.build(), builtin)["code"] is None  # fastprune's own SmallResNet


def test_continue_takes_an_older_file_without_model_code_for_a_builtin_model_only(tmp_path):
    from fastprune.bench import plan
    from fastprune.bench.run import Settings
    from fastprune.errors import ConfigError
    from fastprune.train.recipe import RECIPE

    for name, accepted in (("small_resnet", True), ("resnet18", True), ("torchvision.models:resnet18", True),
                           ("mymodels:make", False)):
        result = plan.new_result(plan.FULL_MODE, Settings(threads=1, amp="off"), False, RECIPE.replace(name=name))
        result["architecture"] = {"spec": name, "class": "X", "parameters": 1}
        result["model_code"] = {"layers": "0123", "code": None}
        older = json.loads(json.dumps(result))
        del older["model_code"]
        if accepted:
            plan.check_can_continue(older, result, tmp_path / "b.json")
        else:
            with pytest.raises(ConfigError, match="does not record model_code"):
                plan.check_can_continue(older, result, tmp_path / "b.json")
        older["model_code"] = {"layers": "4567", "code": None}
        with pytest.raises(ConfigError, match="was measured with another version of the model: its layers differ"):
            plan.check_can_continue(older, result, tmp_path / "b.json")


def test_an_existing_out_is_refused_before_the_built_in_data_is_converted(tmp_path, capsys):
    """The refusal came after prepare_stores had converted Fashion-MNIST (seconds, a minute on a
    first run) and the statistics were computed (a docs audit: 'checked before any work')."""
    (tmp_path / "r.json").write_text("{}")
    assert main(["bench", "--quick", "--out", str(tmp_path / "r.json"), "--workdir", str(tmp_path / "wd")]) == 1
    assert f"{tmp_path / 'r.json'} exists; add --continue" in capsys.readouterr().err
    assert not (tmp_path / "wd").exists()


def test_model_code_is_stable_for_reprs_with_addresses_and_code_typed_into_a_notebook(monkeypatch):
    """A Lambda(fn) module shows its function's address (a new digest in every process: --continue
    always refused); a class typed into a notebook has no file (inspect raised OSError: compare()
    stopped before its first run)."""
    import types

    import torch

    from fastprune.bench.run import model_code
    from fastprune.train.recipe import ModelSpec

    class Lambda(torch.nn.Module):
        def __init__(self, fn):
            super().__init__()
            self.fn = fn

        def extra_repr(self):
            return repr(self.fn)

    def build():
        return torch.nn.Sequential(torch.nn.Linear(2, 2), Lambda(lambda x: x * 2))

    first, second = build(), build()
    assert repr(first) != repr(second)  # the two lambdas' addresses
    spec = ModelSpec(name="nb:make", factory=build)
    assert model_code(first, spec)["layers"] == model_code(second, spec)["layers"]
    notebook = types.ModuleType("notebook_cell")  # a module with no file, as __main__ is in Jupyter
    monkeypatch.setitem(sys.modules, "notebook_cell", notebook)
    typed = type("Typed", (torch.nn.Linear,), {"__module__": "notebook_cell"})
    assert model_code(typed(2, 2), ModelSpec(name="nb:make", factory=lambda: None))["layers"]
