"""Fixtures shared by the whole suite."""

import functools
import os
import sys
from pathlib import Path

import pytest

from fastprune._cpus import LOCAL_RANKS_VARIABLES

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

# The suite run under a launcher (srun on a cluster, say) is one process, not one of its ranks:
# without this, every default thread count (and the tests that check them) would be a share.
for _name in LOCAL_RANKS_VARIABLES:
    os.environ.pop(_name, None)


@pytest.fixture(autouse=True)
def _process_settings_restored():
    """Each test leaves torch's thread count and denormal flushing as it found them: the
    ``fastprune bench`` command line sets both for its whole process (it owns it), and run in-process
    by a test it would change how every later test computes."""
    import torch

    from fastprune.bench.run import flushing_denormals

    threads, flushing = torch.get_num_threads(), flushing_denormals()
    yield
    torch.set_num_threads(threads)
    torch.set_flush_denormal(flushing)


@pytest.fixture
def ctrl_c_raises():
    """SIGINT raises KeyboardInterrupt in this test, as in a terminal, even when the suite was
    started in the background by a shell without job control (`bash scripts/run test &`), which
    starts Python with SIGINT ignored; the disposition is restored afterwards."""
    import signal

    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


@functools.lru_cache(maxsize=None)
def _uses_ffcv(module_path: str) -> bool:
    return "ffcv" in Path(module_path).read_text()


def pytest_runtest_teardown(item):
    """After a test of a module that runs ffcv, collect the garbage now. ffcv compiles numba
    functions per Loader; when the collector frees one, numba 0.68's finalizer raises KeyError,
    and if that collection interrupts a compile() (pytest importing hypothesis for its summary at
    the end of a run that never imported it), CPython 3.11.7 fails the whole run with
    "SystemError: AST constructor recursion depth mismatch" after every test passed (1 run in 3
    of tests/test_convert_*.py). Here the KeyError is only an ignored-exception warning."""
    if "ffcv.loader" in sys.modules and _uses_ffcv(str(item.path)):
        import gc

        gc.collect()


@pytest.fixture(scope="session")
def fashion_mnist_dir() -> Path:
    """The real Fashion-MNIST IDX files (Debian's dataset-fashion-mnist, installed by scripts/run)."""
    if not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.fail(f"Fashion-MNIST not found under {FASHION_MNIST_DIR}: run `bash scripts/run test`, "
                    "which installs Debian's dataset-fashion-mnist")
    return FASHION_MNIST_DIR


def _load_script(folder: str, name: str):
    """Load ``folder/name.py`` (scripts, not a package) as a module. Its folder is on sys.path while
    it loads, as when it runs as ``python folder/name.py``, so it can import the scripts beside it."""
    import importlib.util

    path = Path(__file__).resolve().parent.parent / folder / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"fastprune_{folder}_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


@pytest.fixture(scope="session")
def benchmark_script():
    """Load a script under benchmarks/ as a module: ``benchmark_script("soak")``."""
    return functools.partial(_load_script, "benchmarks")


@pytest.fixture(scope="session")
def study_script():
    """Load a script under studies/ as a module: ``study_script("heldout_tuning")``."""
    return functools.partial(_load_script, "studies")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Print how many cases the fuzz tests ran (tests/test_fuzz_*.py record them on the config)."""
    counts = getattr(config, "fastprune_fuzz_counts", None)
    if not counts:
        return
    terminalreporter.section("fastprune fuzz cases")
    total = 0
    for name, outcome in counts.items():
        cases = outcome.get("ok", 0) + outcome.get("error", 0)
        total += cases
        extra = ", ".join(f"{k}={v}" for k, v in outcome.items())
        terminalreporter.write_line(f"{name}: {cases} cases ({extra})")
    terminalreporter.write_line(f"total: {total} fuzz cases")
