"""The package ships py.typed, a promise to users' type checkers that its annotations hold: a
user's loop, type-checked with mypy --strict, meets no error that is fastprune's (typing audit
2026-12-07: every README line failed under --strict for want of explicit re-exports; pyright
refused the documented ``distributed=False``; ``strategy.keep * 2`` was an error; a misspelt
``fastprune.UBC`` passed as Any)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import fastprune
from fastprune.prune import PrunedSampler

USER_LOOP = '''
from pathlib import Path

import torch
from typing_extensions import assert_type

import fastprune
from fastprune.prune import PrunedSampler
from fastprune.train import fit, make_loaders

store = fastprune.Store(Path("train.beton"))
strategy = fastprune.UCB(len(store), keep=0.5, seed=0)
loader = fastprune.Loader(store, 256, sampler=strategy, device=torch.device("cpu"), distributed=False)
sampler = PrunedSampler(strategy, distributed=False)
assert_type(strategy.keep, float)  # an untyped descriptor gave Any: passed, and said nothing
assert_type(strategy.seed, int)
assert_type(fastprune.InfoBatch(10, None, epochs=4).target, float | None)
state = loader.sampler.state_dict()
for batch in loader:
    losses = torch.zeros(len(batch.indices))
    loss: torch.Tensor = strategy.weighted_loss(batch.indices, losses)
    weights: torch.Tensor = sampler.weights(batch.indices)
report = strategy.sample_report()
hand_made = fastprune.Selection([2, 0], [1.0, 0.5])  # a sampler's select() may build one from lists
ok: bool = store.verify().ok
train_loader, val_loader = make_loaders("train.beton", "val.beton", 256, sampler=strategy)
history = fit(torch.nn.Linear(2, 2), train_loader, val_loader, strategy, 1)
fastprune.UBC(10)
'''


def test_a_users_loop_type_checks_under_mypy_strict(tmp_path):
    pytest.importorskip("mypy", reason="mypy is in the dev extra")
    script = tmp_path / "user_loop.py"
    script.write_text(USER_LOOP)
    (tmp_path / "mypy.ini").write_text("[mypy]\n")  # found first: a user-level mypy config does not apply
    # run in tmp_path: mypy names the script relative to it (user_loop.py:N)
    result = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--no-error-summary",
                             str(script)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    last = len(USER_LOOP.strip("\n").splitlines()) + 1  # the misspelt name, the script's last line
    assert errors == [f'{script.name}:{last}: error: Module has no attribute "UBC"  [attr-defined]'], result.stdout


def test_the_options_type_checkers_read_are_annotated_at_run_time_too():
    """A parameter left unannotated is Any to mypy (which then accepts anything) and was str to
    pyright (inferred from its default), which refused the documented distributed=False."""
    import typing

    from fastprune.train import make_loaders

    for function in (fastprune.Loader.__init__, PrunedSampler.__init__):
        hints = typing.get_type_hints(function)  # resolvable at run time (LightningCLI, jsonargparse)
        assert bool in typing.get_args(hints["distributed"]), function
    assert torch.device in typing.get_args(typing.get_type_hints(fastprune.Loader.__init__)["device"])
    for function in (PrunedSampler.weights, fastprune.UCB.weighted_loss, make_loaders, fastprune.Store.verify):
        assert "return" in typing.get_type_hints(function), function
