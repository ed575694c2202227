"""Files written by another fastprune version: a checkpoint or strategy state from before a
setting was recorded loads, but says which settings it could not check (a CLI resume of such a
checkpoint had switched float32 training to bf16 without a word); one from before times kept were
counted reports none rather than zeros; a newer format asks for that version, an older one for a
new run (a version audit, resuming files of earlier revisions)."""

import warnings

import numpy as np
import pytest
import torch

import fastprune
from fastprune.errors import CheckpointError, UsageWarning
from fastprune.prune.report import report_from_state


def _trained_state():
    strategy = fastprune.UCB(40, keep=0.5, seed=1)
    for epoch in range(2):
        selection = strategy.select(epoch)
        strategy.update(torch.as_tensor(selection.indices), torch.rand(len(selection)))
    return strategy.state_dict()


def _loaded(state):
    """Warnings of loading ``state`` into a fresh UCB like the one that wrote it."""
    strategy = fastprune.UCB(40, keep=0.5, seed=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        strategy.load_state_dict(state)
    return strategy, [str(w.message) for w in caught if issubclass(w.category, UsageWarning)]


def test_a_strategy_state_of_this_version_loads_without_a_word():
    assert _loaded(_trained_state())[1] == []


def test_an_older_strategy_state_names_the_settings_it_cannot_check_and_the_uncounted_times_kept():
    state = _trained_state()
    older = {key: value for key, value in state.items() if key != "kept"}
    older["config"] = {key: value for key, value in state["config"].items() if key not in ("warmup_epochs", "labels")}
    strategy, messages = _loaded(older)
    assert messages == ["UCB.load_state_dict: a state from an older fastprune: its warmup_epochs, labels were not "
                        "recorded, so this strategy's are taken as the run's; times kept were not counted, so they "
                        "count from here on"]
    report = report_from_state(older)  # zeros would read as 'never kept' for samples trained every epoch
    assert "times_kept" not in report and "last_kept_epoch" not in report
    np.testing.assert_array_equal(report["seen"], report_from_state(state)["seen"])
    assert strategy.times_kept.sum() == 0  # counting starts at the next selection


def _checkpoint(tmp_path, settings):
    from fastprune.train import make_optimizer, save_checkpoint

    model = torch.nn.Linear(2, 2)
    path = tmp_path / "run.pt"
    save_checkpoint(path, model, make_optimizer(model), None, None, None, [{"epoch": 0}], settings=settings)
    return path, model


def test_a_checkpoint_without_a_setting_this_run_records_resumes_with_a_warning_naming_it(tmp_path):
    from fastprune.train import load_checkpoint, make_optimizer

    path, model = _checkpoint(tmp_path, {"epochs": 2})  # an older fastprune recorded no precision
    with pytest.warns(UsageWarning) as caught:
        load_checkpoint(path, model, make_optimizer(model), settings={"epochs": 2, "precision": "bf16"})
    (message,) = [str(w.message) for w in caught]
    assert message.startswith(f"{path} does not record precision (an older fastprune, or a run set up otherwise, "
                              "wrote it): this run's is "
                              "taken as the checkpoint's (precision: pass amp= / --amp as the run trained")
    assert caught[0].filename == __file__  # the user's line
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_checkpoint(path, model, make_optimizer(model), settings={"epochs": 2})  # all recorded: silent


def test_a_checkpoint_from_before_label_field_resumes_silently_with_the_default_and_refuses_another(tmp_path):
    """Before --label-field every run read the default field: its absence means None, which a
    resume may take without a word; another field would train a different task, and is refused."""
    from fastprune.train import load_checkpoint, make_optimizer

    path, model = _checkpoint(tmp_path, {"epochs": 2})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_checkpoint(path, model, make_optimizer(model), settings={"epochs": 2, "label_field": None})
    with pytest.raises(CheckpointError, match="label_field=None in the checkpoint, 'fine' now"):
        load_checkpoint(path, model, make_optimizer(model), settings={"epochs": 2, "label_field": "fine"})


def test_a_checkpoint_of_another_format_says_whether_to_upgrade_or_start_over(tmp_path):
    from fastprune.train import load_checkpoint

    model = torch.nn.Linear(2, 2)
    for found, advice in (("fastprune-checkpoint-3", "a newer fastprune wrote it: resume with that version"),
                          ("fastprune-checkpoint-1", "this version cannot resume it: start a new run"),
                          ("something-else", "this version cannot resume it: start a new run")):
        torch.save({"format": found, "model": model.state_dict()}, tmp_path / "c.pt")
        with pytest.raises(CheckpointError, match=f"format '{found}', expected 'fastprune-checkpoint-2'\\); {advice}"):
            load_checkpoint(tmp_path / "c.pt", model)


def test_a_checkpoint_holding_numpy_arrays_names_the_older_format_without_torchs_allow_list_advice(tmp_path):
    """Checkpoints from before format 2 pickled numpy arrays, which weights_only refuses with advice
    to allow-list numpy's reconstructor: advice to trust the file, which ours leaves out."""
    from fastprune.train import load_checkpoint

    model = torch.nn.Linear(2, 2)
    torch.save({"model": model.state_dict(), "rng": {"numpy": np.random.get_state()}, "order": np.arange(3)},
               tmp_path / "old.pt")
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(tmp_path / "old.pt", model)
    message = str(error.value)
    assert "written by a fastprune before checkpoint format 2" in message and "Unsupported global" in message
    assert "safe_globals" not in message and "weights_only" not in message and "\n" not in message

