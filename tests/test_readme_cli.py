"""The README's command-line block runs, as a bash script, on the real Fashion-MNIST.

It runs verbatim except for one documented, minimal rewrite that keeps it fast enough for CI:
flags the commands already have are appended (before any trailing comment) to shrink the
runs, never to change what a line does:

- ``fastprune train``: ``--epochs 1 --width 8`` (one epoch of a narrow model, not the recipe's 10
  epochs of the full-width one);
- ``fastprune bench --quick`` and ``fastprune bench``: ``--epochs 1 --train-limit 1000`` and a
  ``--workdir`` in the test's folder; the full benchmark also ``--seeds 0 --keeps 0.5 --strategies
  ucb`` (full data and UCB once, instead of 63 runs of an hour in all).

Everything else (the three conversions, ``info --verify``, the checkpoint and JSON log, the bench
reports) runs as written, in a temp folder holding the ``./photos`` folder the block converts.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_readme import README

BIN = Path(sys.executable).parent
SHRINK = {
    "fastprune train": ["--epochs", "1", "--width", "8"],
    "fastprune bench --quick": ["--epochs", "1", "--train-limit", "1000", "--workdir", "bench-data"],
    "fastprune bench": ["--epochs", "1", "--train-limit", "1000", "--workdir", "bench-data", "--seeds", "0",
                        "--keeps", "0.5", "--strategies", "ucb"],
}


def cli_block() -> str:
    blocks = [b for b in re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S) if "fastprune convert" in b]
    assert len(blocks) == 1, "the README's command-line block (fastprune convert ...) is missing or doubled"
    return blocks[0]


def shrunk(block: str) -> tuple[str, list[str]]:
    """The block with SHRINK's flags appended to its commands (continuation lines joined first),
    and the commands it holds, as written."""
    lines, commands = [], []
    for line in block.replace("\\\n", " ").splitlines():
        command, hash_, comment = line.partition(" #")
        command = " ".join(command.split())
        commands.append(command)
        prefix = next((p for p in SHRINK if command == p or command.startswith(p + " ")), None)
        if prefix is not None and not (prefix == "fastprune bench" and "--quick" in command):
            command += " " + " ".join(SHRINK[prefix])
        lines.append(command + (hash_ + comment if hash_ else ""))
    return "\n".join(lines) + "\n", commands


@pytest.mark.slow
def test_readme_command_line_block_runs(fashion_mnist_dir, tmp_path):
    script, commands = shrunk(cli_block())
    # what the block needs, and what each shrink targets, are still there
    assert any(c.startswith("fastprune train --train train.beton --val test.beton") for c in commands), commands
    assert "fastprune convert fashion-mnist --split test --out test.beton" in commands
    assert {"fastprune bench --quick", "fastprune bench"} <= set(commands), commands
    rng = np.random.default_rng(0)
    for name in ("cats/a.jpg", "cats/b.png", "dogs/c.jpg"):  # the ./photos folder the block converts
        (tmp_path / "photos" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (80, 100, 3), dtype=np.uint8)).save(tmp_path / "photos" / name)
    (tmp_path / "cli_block.sh").write_text(script)
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    result = subprocess.run(["bash", "-e", "cli_block.sh"], cwd=tmp_path, capture_output=True, text=True,
                            env=env, timeout=900)
    assert result.returncode == 0, (script, result.stdout[-3000:], result.stderr[-3000:])
    for name in ("train.beton", "photos.beton", "test.beton", "run.pt", "run.json"):
        assert (tmp_path / name).is_file(), name
    assert re.search(r"verify: .*train\.beton: OK", result.stdout), result.stdout[-3000:]
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["history"][-1]["val_acc"] > 50, run["history"]  # %, 10 classes: chance is 10%
    for stem in ("end_to_end_quick", "end_to_end"):
        assert (tmp_path / "benchmarks" / "results" / f"{stem}.json").is_file(), stem
