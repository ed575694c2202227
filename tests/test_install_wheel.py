"""What `pip install .` gives a user, checked without the test environment's editable install:
the wheel pip builds from this checkout holds every module and the compiled core, declares the
extras the README names, and works on its own (convert a store, prune, load a batch)."""

import subprocess
import sys
import sysconfig
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # --no-build-isolation: the venv's scikit-build-core/nanobind (no download); scikit-build-core's
    # build dir makes a rebuild incremental, as for a user running pip install twice
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-q",
                             "-w", str(out), str(ROOT)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    (wheel,) = out.glob("fastprune-*.whl")
    return wheel


def test_the_wheel_holds_every_module_the_core_and_the_extras(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {str(p.relative_to(ROOT / "src")) for p in (ROOT / "src" / "fastprune").rglob("*.py")}
    assert sources <= names, sorted(sources - names)
    assert any(n.startswith("fastprune/_core") and n.endswith(".so") for n in names), "no compiled core"
    assert "fastprune/py.typed" in names, "no PEP 561 marker: type checkers would see Any for every name"
    (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    meta = Parser().parsestr(zipfile.ZipFile(wheel).read(metadata).decode())
    assert {"vision", "plots", "ffcv", "dev"} <= set(meta.get_all("Provides-Extra"))
    hard = {r.split(";")[0].split(">")[0].split("=")[0].strip().lower() for r in meta.get_all("Requires-Dist")
            if "extra ==" not in r}
    assert {"torch", "numpy", "numba"} <= hard and not hard & {"torchvision", "matplotlib", "ffcv"}


def test_the_wheel_works_without_the_checkout(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    # python -S: no site-packages .pth hooks, so the test venv's editable fastprune is not found;
    # the venv's site-packages is appended after the wheel only for numpy/torch/numba
    script = f"""
import sys
sys.path[:0] = [{str(site)!r}]
sys.path.append({sysconfig.get_paths()["purelib"]!r})
import numpy as np, fastprune
from fastprune.convert import from_arrays
assert fastprune.__file__.startswith({str(site)!r}), fastprune.__file__
images = np.arange(64 * 8 * 8 * 3, dtype=np.uint64).reshape(64, 8, 8, 3).astype(np.uint8)
store = fastprune.Store(from_arrays(images, np.arange(64) % 4, "w.beton", progress=False))
strategy = fastprune.UCB(len(store), keep=0.5, seed=0)
loader = fastprune.Loader(store, batch_size=16, sampler=strategy, seed=0)
batch = next(iter(loader))
assert len(loader) == 2 and tuple(batch[0].shape) == (16, 8, 8, 3)  # no transforms: uint8 NHWC
assert np.array_equal(batch[0][0].numpy(), images[int(batch[2][0])])
print(fastprune.build_info()["jpeg_decoder"])
"""
    result = subprocess.run([sys.executable, "-S", "-c", script], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip(), "build_info() said nothing"
