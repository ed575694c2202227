"""Optional dependencies: what pyproject.toml makes hard and optional, and the one-line error (or
skipped plot) when an optional one is missing, simulated by ``sys.modules[name] = None``."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest's own TOML reader
    import tomli as tomllib

import pytest

from fastprune import FastpruneError
from fastprune.errors import MissingExtraError

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# import name -> distribution name, where they differ
DISTRIBUTIONS = {"PIL": "pillow", "cv2": "opencv-python"}


def _names(requirements: list[str]) -> set[str]:
    return {r.split(";")[0].split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip().lower()
            for r in requirements}


def _hide(monkeypatch, *modules: str) -> None:
    """Make ``import module`` fail as if it were not installed (Python's own convention)."""
    for name in list(sys.modules):
        if any(name == m or name.startswith(m + ".") for m in modules):
            monkeypatch.setitem(sys.modules, name, None)
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)


def test_hard_dependencies_are_only_what_loading_pruning_and_converting_need():
    project = PYPROJECT["project"]
    assert _names(project["dependencies"]) == {"numpy", "numba", "torch", "pillow", "tqdm"}
    extras = project["optional-dependencies"]
    assert _names(extras["vision"]) == {"torchvision"} and _names(extras["plots"]) == {"matplotlib"}
    assert _names(extras["ffcv"]) == {"ffcv"}


def _parsed(path):
    """ast.parse with the garbage collector paused: in a CI run a collection inside the AST
    constructor ran finalizers of earlier tests' objects (numba's, one raising), and CPython 3.11's
    module-wide AST recursion counter ended the parse with "SystemError: AST constructor recursion
    depth mismatch"."""
    import gc

    enabled = gc.isenabled()
    gc.disable()
    try:
        return ast.parse(path.read_text())
    finally:
        if enabled:
            gc.enable()


def test_the_dev_extra_brings_every_package_the_tests_import():
    """scripts/run installs .[ffcv,dev]: together they must cover every test import."""
    extras = PYPROJECT["project"]["optional-dependencies"]
    installed = _names(PYPROJECT["project"]["dependencies"] + extras["dev"] + extras["ffcv"])
    # the tests' own modules and the scripts they import from benchmarks/ and studies/
    local = {path.stem for folder in ("tests", "benchmarks", "studies") for path in (ROOT / folder).glob("*.py")}
    local |= {"fastprune"}
    imported = set()
    for path in (ROOT / "tests").glob("*.py"):
        for node in ast.walk(_parsed(path)):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    newer_stdlib = {"tomllib"}  # from Python 3.11 (3.10 imports tomli instead)
    third_party = {m for m in imported if m not in sys.stdlib_module_names | newer_stdlib and m not in local}
    missing = {m for m in third_party if DISTRIBUTIONS.get(m, m).lower() not in installed}
    assert not missing, f"tests import {sorted(missing)}, which no extra scripts/run installs brings"
    # the script still installs those extras
    assert '".[ffcv,dev]"' in (ROOT / "scripts" / "run").read_text()


def test_resnet18_without_torchvision_names_the_vision_extra(monkeypatch):
    from fastprune.models import build_model

    _hide(monkeypatch, "torchvision")
    with pytest.raises(MissingExtraError) as caught:
        build_model("resnet18", num_classes=10)
    message = str(caught.value)
    assert message == ('the resnet18 model needs torchvision, which is not installed: '
                       'pip install "fastprune[vision]"')
    assert isinstance(caught.value, ImportError) and isinstance(caught.value, FastpruneError)
    assert build_model("small_resnet", num_classes=10, widths=(4,)) is not None  # needs no extra


def _result() -> dict:
    def run(strategy, keep, acc, wall):
        return {"strategy": strategy, "keep": keep, "seed": 0, "final_acc": acc, "wall_s": wall,
                "curve": [[wall / 2, acc - 1], [wall, acc]], "scoring_s": 0.0, "pruning_overhead_s": 0.1,
                "block": 0.5, "eval_s": 1.0}

    from fastprune.bench import plan, report
    from fastprune.bench.run import Settings

    mode = {**plan.QUICK_MODE, "seeds": (0,), "keeps": (0.5,), "strategies": ("ucb",)}
    result = plan.new_result(mode, Settings(), quick=True)
    result["runs"] = [run("full", 1.0, 90.0, 100.0), run("ucb", 0.5, 89.8, 55.0)]
    result["summary"] = report.summarize(result["runs"])
    return result


@pytest.mark.parametrize("matplotlib", ["installed", "missing"])
def test_bench_writes_json_and_table_and_skips_plots_without_matplotlib(tmp_path, monkeypatch, matplotlib):
    from fastprune.bench import cli

    if matplotlib == "missing":
        _hide(monkeypatch, "matplotlib")
    out = tmp_path / "e2e.json"
    skipped = cli.write_outputs(out, _result())
    assert json.loads(out.read_text())["runs"][1]["strategy"] == "ucb"
    assert "| keep |" in out.with_suffix(".md").read_text()
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    if matplotlib == "missing":
        assert skipped == "plotting the benchmark needs matplotlib, which is not installed: " \
                          'pip install "fastprune[plots]"'
        assert pngs == []
    else:
        assert skipped is None and pngs == ["e2e_curves.png", "e2e_frontier.png"]


def test_ffcv_interop_and_a_torchvision_model_spec_without_their_extras_name_them(monkeypatch):
    """`from fastprune.integrations.ffcv import PrunedOrder` raised a bare 'No module named
    ffcv'; `--model torchvision.models:resnet18` said to put torchvision's folder on PYTHONPATH."""
    import importlib

    from fastprune.errors import ConfigError
    from fastprune.models import load_model_factory

    _hide(monkeypatch, "ffcv", "torchvision")
    monkeypatch.delitem(sys.modules, "fastprune.integrations.ffcv", raising=False)
    with pytest.raises(MissingExtraError, match=r'^fastprune.integrations.ffcv needs ffcv, which is not installed: '
                                                r'pip install "fastprune\[ffcv\]"$'):
        importlib.import_module("fastprune.integrations.ffcv")
    with pytest.raises(ConfigError, match=r"torchvision, which is not installed: pip install \"fastprune\[vision\]\""):
        load_model_factory("torchvision.models:resnet18")
    monkeypatch.undo()  # torchvision installed: a typo in the module is a typo, not a missing extra
    with pytest.raises(ConfigError, match="cannot import 'torchvision.modelz'"):
        load_model_factory("torchvision.modelz:resnet18")


def test_an_installed_extra_whose_own_import_fails_is_not_called_missing(tmp_path, monkeypatch):
    """ffcv installed without cv2 (common) was reported as 'not installed: pip install
    fastprune[ffcv]', hiding the real error."""
    from fastprune.errors import require

    (tmp_path / "brokenextra").mkdir()
    (tmp_path / "brokenextra" / "__init__.py").write_text("import cv2_that_is_not_there\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="cv2_that_is_not_there") as caught:
        require("brokenextra", "x", "testing")
    assert not isinstance(caught.value, MissingExtraError)
    with pytest.raises(MissingExtraError, match=r'^testing needs absentextra, which is not installed: pip install "fastprune\[x\]"$'):
        require("absentextra.sub", "x", "testing")
