"""What `pip install .` gives a user, checked without the test environment's editable install:
the wheel pip builds from this checkout holds every module and the compiled core, declares the
extras the README names, and works on its own (convert a store, prune, load a batch); building it
writes nothing into the checkout; and a machine without a C++ compiler or without the Python
headers gets one paragraph saying what to install (CMakeLists.txt), not CMake's raw output.

The redistributable wheel (scripts/build_wheel: auditwheel, libjpeg-turbo bundled, installed and
smoke-tested in a fresh venv with no compiler on PATH) is checked by that script itself (--check),
not here: it installs torch and the dependencies into a new venv, several minutes."""

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# what a checkout holds besides its sources when nothing lists them (no git): never copied
NOT_SOURCES = shutil.ignore_patterns(".git", ".venv", "build", "dist", "__pycache__", "*.so", "*.egg-info",
                                     ".pytest_cache", ".hypothesis", "data", "runs", ".gpu*")


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """A copy of this checkout's sources (git's tracked and unignored files), without the build/
    folder the development install keeps, so that a build writing into it would show."""
    dest = tmp_path_factory.mktemp("checkout") / "fastprune"
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True) if (ROOT / ".git").exists() else None
    if listed is not None and listed.returncode == 0:
        for name in listed.stdout.decode().split("\0"):
            if name and (ROOT / name).is_file():
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / name, dest / name)
    else:
        shutil.copytree(ROOT, dest, ignore=NOT_SOURCES)
    return dest


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def pip_wheel(source: Path, out: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    # --no-build-isolation: the venv's scikit-build-core/nanobind (no download)
    return subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps",
                           "-w", str(out), *args, str(source)], capture_output=True, text=True, timeout=900,
                          env=env, cwd=out.parent)


@pytest.fixture(scope="module")
def wheel(checkout, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    before = files_under(checkout)
    result = pip_wheel(checkout, out, "-q")
    assert result.returncode == 0, result.stderr[-3000:]
    # pyproject sets no build-dir: CMake's tree lives in a temporary folder (the development
    # installs, scripts/run and scripts/dev-build, ask for build/{wheel_tag} explicitly)
    assert files_under(checkout) == before, f"pip wrote into the checkout: {sorted(files_under(checkout) - before)}"
    (wheel,) = out.glob("fastprune-*.whl")
    return wheel


@pytest.mark.slow  # the wheel fixture compiles the core from scratch, as pip does (~1-2 min)
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


@pytest.mark.slow  # the wheel fixture compiles the core from scratch, as pip does (~1-2 min)
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


def assert_one_paragraph(result: subprocess.CompletedProcess, says: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    # CMake wraps the message; unwrap it to look for the words
    flat = " ".join(output.replace("\n", " ").split())
    assert says in flat, output[-3000:]
    assert "apt-get install g++ python3-dev" in flat and "prebuilt fastprune wheel" in flat, output[-3000:]
    assert "CMAKE_CXX_COMPILER" not in output and "patchlevel.h" not in output, output[-3000:]


def test_no_cxx_compiler_gets_one_paragraph_naming_what_to_install(checkout, tmp_path):
    """pip with no compiler on PATH: a PATH holding only cmake and make (what scikit-build-core runs),
    so that CMake's search for c++/g++/clang++ finds nothing, as on a bare machine."""
    cmake = subprocess.run(["cmake", "-P", "/dev/stdin"], input='message("${CMAKE_COMMAND}")', text=True,
                           capture_output=True).stderr.strip()
    make = shutil.which("make") or shutil.which("ninja")
    if not (cmake and Path(cmake).is_file() and make):
        pytest.skip("needs cmake and make (or ninja) to stand alone on a PATH")
    bare = tmp_path / "bin"
    bare.mkdir()
    (bare / "cmake").symlink_to(cmake)
    (bare / Path(make).name).symlink_to(os.path.realpath(make))
    for compiler in ("c++", "g++", "clang++", "cc", "gcc"):
        assert not (bare / compiler).exists()
    env = {k: v for k, v in os.environ.items() if k not in ("CXX", "CC", "CMAKE_ARGS", "CMAKE_GENERATOR")}
    env["PATH"] = str(bare)
    out = tmp_path / "out"
    result = pip_wheel(checkout, out, env=env)
    assert_one_paragraph(result, "fastprune: no C++ compiler found.")


def test_no_python_headers_get_one_paragraph_naming_what_to_install(checkout, tmp_path):
    """pip on a Python whose include folder has no Python.h (Debian's python3 without python3-dev):
    scikit-build-core passes that folder to CMake as Python_INCLUDE_DIR; here an empty one."""
    empty = tmp_path / "include"
    empty.mkdir()
    result = pip_wheel(checkout, tmp_path / "out", "--config-settings", f"cmake.define.Python_INCLUDE_DIR={empty}")
    assert_one_paragraph(result, "the Python headers (Python.h) for")
