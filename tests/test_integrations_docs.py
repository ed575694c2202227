"""docs/integrations.md's PyTorch Lightning and Accelerate examples run as written (on CPU, one
process), each block after the shared set-up block, as a script in a temp dir."""

import os
import re
import subprocess
import sys

import pytest

from test_readme import ROOT, python_blocks

DOC = ROOT / "docs" / "integrations.md"


@pytest.mark.parametrize("framework, block", [("lightning", 1), ("accelerate", 2)])
def test_integration_example_runs(tmp_path, framework, block):
    pytest.importorskip(framework)
    blocks = python_blocks(DOC.read_text())
    assert len(blocks) == 4, "docs/integrations.md: set-up, Lightning, Accelerate and DDP blocks expected"
    script = tmp_path / f"{framework}_example.py"
    script.write_text(blocks[0] + "\n" + blocks[block])
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    # the recipe learns the toy task (2 classes: chance is 50%), not only runs
    found = re.search(rf"{framework}: accuracy ([\d.]+)%", result.stdout, flags=re.I)
    assert found and float(found.group(1)) >= 90, result.stdout
    if framework == "lightning":  # a fastprune.Loader as val loader, its accuracy logged
        logged = re.search(r"logged val_acc ([\d.]+)", result.stdout)
        assert logged and float(logged.group(1)) >= 0.9, result.stdout


def test_plain_ddp_example_runs_under_torchrun(tmp_path):
    """The DDP example: 2 gloo ranks, each half of every pruned epoch (UCB keep 0.5 of 512 samples,
    batch 32: 128 samples, 4 batches a rank), and the model learns the toy task."""
    blocks = python_blocks(DOC.read_text())
    script = tmp_path / "ddp_example.py"
    script.write_text(blocks[0] + "\n" + blocks[3])
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             "--nproc_per_node=2", str(script)], cwd=tmp_path, capture_output=True, text=True,
                            timeout=180, env={**os.environ, "TMPDIR": str(tmp_path)})  # torchrun's temp folders
    assert result.returncode == 0, result.stderr[-3000:]
    for rank in (0, 1):
        assert [int(n) for n in re.findall(rf"rank {rank} epoch \d: (\d+) batches", result.stdout)] == [4] * 4
    found = re.search(r"ddp: accuracy ([\d.]+)%", result.stdout)
    assert found and float(found.group(1)) >= 90, result.stdout
