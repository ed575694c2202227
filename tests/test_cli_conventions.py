"""Command-line conventions (issue 34 point 9): --version, one-line errors for bad argument
values, TQDM_DISABLE and a labelled bar in convert, info --json, py.typed, a clean dir(fastprune)."""

from __future__ import annotations

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

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    rng = np.random.default_rng(0)
    out = tmp_path_factory.mktemp("conventions") / "tiny.beton"
    return from_arrays(rng.integers(0, 256, (32, 8, 8, 3), dtype=np.uint8), np.arange(32) % 2, out,
                       progress=False, class_names=["even", "odd"])


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(f"fastprune {fastprune.__version__} (JPEG via ")


TRAIN_CASES = [
    (["--keep", "1.5"], "--keep", "a fraction in (0, 1], got 1.5"),
    (["--keep", "0"], "--keep", "a fraction in (0, 1]"),
    (["--keep", "nan"], "--keep", "a fraction in (0, 1]"),
    (["--epochs", "0"], "--epochs", "positive integer"),
    (["--batch-size", "0"], "--batch-size", "positive integer"),
    (["--batch-size", "1.5"], "--batch-size", "invalid positive_int value"),
    (["--lr", "-1"], "--lr", "must be positive"),
    (["--weight-decay", "-1"], "--weight-decay", "a finite number >= 0"),
    (["--label-smoothing", "2"], "--label-smoothing", "a number in [0, 1]"),
    (["--pad", "-1"], "--pad", "an integer >= 0"),
    (["--crop", "0"], "--crop", "positive integer"),
    (["--width", "0"], "--width", "positive integer"),
    (["--seed", "-1"], "--seed", "an integer in [0, 2**64 - 1]"),
    (["--eval-every", "0"], "--eval-every", "positive integer"),
    (["--threads", "0"], "--threads", "positive integer"),
]
BENCH_CASES = [
    (["--keeps", "0.5", "1.5"], "--keeps", "a fraction in (0, 1], got 1.5"),
    (["--seeds", "-1"], "--seeds", "an integer in [0, 2**64 - 1]"),
    (["--epochs", "0"], "--epochs", "positive integer"),
    (["--train-limit", "0"], "--train-limit", "positive integer"),
    (["--eval-every", "0"], "--eval-every", "positive integer"),
    (["--threads", "0"], "--threads", "positive integer"),
]


@pytest.mark.parametrize("command, bad, argument, message",
                         [("train", *case) for case in TRAIN_CASES] + [("bench", *case) for case in BENCH_CASES])
def test_a_bad_argument_value_ends_in_one_line_naming_it(tiny_store, tmp_path, capsys, command, bad, argument,
                                                          message):
    """Refused as the command line is read (argparse's usage, then one error line), before any
    store is opened or any work starts; today's code ran into tracebacks (--keep 1.5: ValueError
    from the strategy) or trained on nonsense (--pad -1, --label-smoothing 2)."""
    stores = ["--train", str(tiny_store), "--val", str(tiny_store)]
    extra = ["--epochs", "1"] if command == "train" else ["--epochs", "1", "--workdir", str(tmp_path),
                                                          "--out", str(tmp_path / "r.json")]
    with pytest.raises(SystemExit) as exit_:
        main([command, *stores, *extra, *bad, "--device", "cpu"])
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    last = error.strip().splitlines()[-1]
    assert last.startswith(f"fastprune {command}: error: argument {argument}: "), error
    assert message in last and "Traceback" not in error


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("command", ["train", "bench"])
def test_device_cuda_without_cuda_is_one_line(tiny_store, tmp_path, capsys, command):
    stores = ["--train", str(tiny_store), "--val", str(tiny_store), "--epochs", "1"]
    extra = [] if command == "train" else ["--workdir", str(tmp_path), "--out", str(tmp_path / "r.json")]
    assert main([command, *stores, *extra, "--device", "cuda"]) == 1
    error = capsys.readouterr().err
    assert error.startswith(f"fastprune {command}: error: device 'cuda'") and error.count("\n") == 1, error


def _convert(tmp_path, env_extra):
    np.savez(tmp_path / "d.npz", images=np.zeros((300, 4, 4, 3), np.uint8), labels=np.arange(300) % 3)
    out = tmp_path / f"out{len(env_extra)}.beton"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TQDM_")} | env_extra
    result = subprocess.run([sys.executable, "-m", "fastprune", "convert", str(tmp_path / "d.npz"), "-o", str(out),
                             "--workers", "1"], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    return out, result.stderr


def test_convert_labels_its_bar_with_the_file_and_honours_TQDM_DISABLE(tmp_path):
    out, bar = _convert(tmp_path, {})
    assert f"writing {out.name}: 100%" in bar and "write_dataset" not in bar
    _, quiet = _convert(tmp_path, {"TQDM_DISABLE": "1"})
    assert quiet == ""


def test_info_json(tiny_store, capsys):
    assert main(["info", str(tiny_store), "--json", "--verify"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["file"] == str(tiny_store) and record["samples"] == 32 and record["checksums"] is True
    assert [(f["name"], f["type"]) for f in record["fields"]] == [("image", "RGBImageField"), ("label", "IntField")]
    assert record["fields"][0] | {"settings": None} == {"name": "image", "type": "RGBImageField", "settings": None,
                                                          "height": [8, 8], "width": [8, 8], "jpeg": 0, "raw": 32,
                                                          "image_bytes": 32 * 8 * 8 * 3}
    assert record["classes"] == {"field": "label", "counts": {"0": 16, "1": 16}, "names": ["even", "odd"]}
    assert record["verify"]["ok"] is True and record["size_bytes"] == tiny_store.stat().st_size


def test_py_typed_marker_is_in_the_package():
    """PEP 561: without it type checkers treat every fastprune name as Any. The wheel test
    (test_install_wheel.py) checks that the built wheel carries it."""
    assert (ROOT / "src" / "fastprune" / "py.typed").is_file()
    assert (Path(fastprune.__file__).parent / "py.typed").is_file()


def test_dir_lists_each_public_name_once_and_no_helper_imports():
    fastprune.Loader, fastprune.UCB, fastprune.convert  # noqa: B018  (used once: now in globals() too)
    names = dir(fastprune)
    assert len(names) == len(set(names)), sorted(n for n in set(names) if names.count(n) > 1)
    assert not {"annotations", "importlib", "_core", "_LAZY", "TYPE_CHECKING", "Any"} & set(names)
    assert set(fastprune.__all__) <= set(names)
    for name in names:
        getattr(fastprune, name)  # every listed name resolves


def test_type_checkers_see_every_lazy_name_as_what_it_resolves_to():
    """The public names are imported lazily by a module __getattr__: without imports under
    TYPE_CHECKING, mypy typed fastprune.Store, fastprune.UCB(...) and fastprune.convert as Any and
    pyright flagged the README's quick start ('ModuleType is not callable')."""
    import ast
    import importlib

    tree = ast.parse((ROOT / "src" / "fastprune" / "__init__.py").read_text())
    block = next(node for node in tree.body if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING")
    seen = {}
    for node in block.body:
        assert isinstance(node, ast.ImportFrom) and node.level == 1
        for alias in node.names:
            module = importlib.import_module(f"fastprune.{node.module}" if node.module else "fastprune")
            seen[alias.name] = getattr(module, alias.name) if node.module else importlib.import_module(f"fastprune.{alias.name}")
    assert set(seen) == set(fastprune._LAZY) | set(fastprune._SUBMODULES)
    for name, value in seen.items():
        assert getattr(fastprune, name) is value, name
    # mypy --strict and pyright take only "X as X" imports and a literal __all__ as re-exports: every
    # README line failed under --strict ('Module "fastprune" does not explicitly export "Store"')
    assert all(alias.asname == alias.name for node in block.body for alias in node.names)
    literal = next(node.value for node in tree.body if isinstance(node, ast.Assign)
                   and getattr(node.targets[0], "id", "") == "__all__")
    assert isinstance(literal, ast.List) and all(isinstance(item, ast.Constant) for item in literal.elts)
    assert set(fastprune._LAZY) <= set(fastprune.__all__)
    # the module __getattr__ only where checkers do not look: a misspelt fastprune.UBC was Any, not an error
    assert not any(isinstance(node, ast.FunctionDef) and node.name == "__getattr__" for node in tree.body)
    assert any(isinstance(node, ast.FunctionDef) and node.name == "__getattr__" for node in block.orelse)


def test_the_readme_s_dotted_ffcv_bridge_resolves_after_import_fastprune_alone():
    """The README writes fastprune.integrations.ffcv.PrunedOrder; after `import fastprune` alone
    that was an AttributeError (every other subpackage loaded on first use)."""
    import subprocess
    import sys

    pytest.importorskip("ffcv")
    code = "import fastprune; print(fastprune.integrations.ffcv.PrunedOrder.__name__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "PrunedOrder"
