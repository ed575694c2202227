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
    # UCB at keep 0.5 over 60k samples and batch 256: 118 batches per epoch, in both epochs
    assert result.stdout.count("118 batches") == 2, result.stdout
    # the quick start learns: its loss falls and its test accuracy is far above chance (10%);
    # 0-255 statistics in Normalize had left this loop at 10% with no error
    losses = [float(v) for v in re.findall(r"batches, mean loss ([\d.]+)", result.stdout)]
    assert len(losses) == 2 and losses[1] < 0.8 * losses[0], result.stdout
    accuracy = float(re.search(r"test accuracy ([\d.]+)%", result.stdout).group(1))
    assert accuracy > 50, result.stdout
    assert "torch.Size([64, 3, 28, 28]) torch.float32" in result.stdout
    assert len(re.findall(r"^epoch \d: \d+ samples$", result.stdout, flags=re.M)) == 2
    assert "epoch 1: 500 samples" in result.stdout
    assert "resumed at epoch 2: 500 samples" in result.stdout  # the guide's resume of a loop of one's own
    # the guide's compare() example: its table's rows, and a speed-up read off a row
    assert "| full | 1.0 | " in result.stdout and "| ucb | 0.5 | " in result.stdout
    ucb = re.search(r"UCB: ([\d.]+)% in [\d.]+ s of training, [\d.]+x full data's speed", result.stdout)
    assert ucb and float(ucb.group(1)) > 50, result.stdout           # 4 classes: chance is 25%
    sampler = re.search(r"PrunedSampler: accuracy ([\d.]+)%", result.stdout)
    assert sampler and float(sampler.group(1)) > 70, result.stdout    # 3 classes: chance is 33%
    mixup = re.search(r"MixUp: accuracy ([\d.]+)%", result.stdout)  # the own-loop MixUp example learns
    assert mixup and float(mixup.group(1)) > 70, result.stdout
    # the guide's regression example learns: its error is far below predicting the mean's
    regression = re.search(r"regression: mean squared error ([\d.]+), predicting the mean: ([\d.]+)", result.stdout)
    assert regression and float(regression.group(1)) < 0.2 * float(regression.group(2)), result.stdout
    assert "20 samples, classes ['ant', 'bee', 'cow']" in result.stdout  # the Hugging Face example
    assert "None / Ankle boot" in result.stdout  # the guide's class names: none from IDX, then given
