"""The README's and docs/guide.md's Python examples run as written: concatenated, in order (the
guide continues from the README's quick start), as a script in a temp dir."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
GUIDE = ROOT / "docs" / "guide.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_python_examples_run(tmp_path):
    blocks = python_blocks(README.read_text())
    assert blocks, "the README lost its Python example"
    guide = python_blocks(GUIDE.read_text())
    assert len(guide) >= 2, "docs/guide.md lost its Python examples"
    blocks += guide
    script = tmp_path / "readme_examples.py"
    script.write_text("\n".join(blocks))
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    # UCB at keep 0.5 over 10k samples and batch 256: 20 batches per epoch, in both epochs
    assert result.stdout.count("20 batches") == 2, result.stdout
    assert "torch.Size([64, 3, 28, 28]) torch.float32" in result.stdout
    assert result.stdout.count("samples") == 2 and "epoch 1: 500 samples" in result.stdout
    # the guide's compare() example: its table's rows, and a speed-up read off a row
    assert "| full | 1.0 | " in result.stdout and "| ucb | 0.5 | " in result.stdout
    assert re.search(r"UCB: [\d.]+% in [\d.]+ s of training, [\d.]+x full data's speed", result.stdout)
    assert "None / Ankle boot" in result.stdout  # the guide's class names: none from IDX, then given
