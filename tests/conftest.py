"""Fixtures shared by the whole suite."""

from pathlib import Path

import pytest

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="session")
def fashion_mnist_dir() -> Path:
    """The real Fashion-MNIST IDX files (Debian's dataset-fashion-mnist, installed by scripts/run)."""
    if not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.fail(f"Fashion-MNIST not found under {FASHION_MNIST_DIR}: run `bash scripts/run test`, "
                    "which installs Debian's dataset-fashion-mnist")
    return FASHION_MNIST_DIR
