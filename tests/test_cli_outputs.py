"""The files ``train``, ``bench`` and ``scores`` write are checked before any work: an output that
is one of the run's stores, a folder, another output's file, an existing checkpoint without
--resume or a picture name matplotlib cannot write stops the command in one line, with the stores
untouched and nothing trained."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import fastprune.bench.run as bench_run
import fastprune.train.cli as train_cli
from fastprune.cli import main
from fastprune.convert import from_arrays


class Trained(BaseException):
    """Raised in place of training: a check that lets the command reach it has failed."""


@pytest.fixture
def stores(tmp_path, monkeypatch):
    def never_train(*args, **kwargs):
        raise Trained

    monkeypatch.setattr(train_cli, "run_recipe", never_train)
    monkeypatch.setattr(bench_run, "run_recipe", never_train)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (64, 8, 8, 3), dtype=np.uint8)
    train = from_arrays(images, np.arange(64) % 2, tmp_path / "train.beton", progress=False)
    val = from_arrays(images[:16], np.arange(16) % 2, tmp_path / "val.beton", progress=False)
    return train, val


def _train(train, val, *extra):
    return main(["train", "--train", str(train), "--val", str(val), "--epochs", "1", "--width", "4",
                 "--no-progress", "--threads", "1", *map(str, extra)])


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


@pytest.mark.parametrize("option", ["--checkpoint", "--log-json", "--log-csv"])
def test_an_output_on_a_store_is_refused_and_the_store_kept(stores, capsys, option):
    train, val = stores
    before = train.read_bytes()
    assert _train(train, val, option, train) == 1
    err = _error(capsys)
    assert "is the input file" in err and option in err
    assert train.read_bytes() == before
    assert _train(train, val, option, val) == 1


def test_outputs_that_are_folders_or_one_file_twice_are_refused_before_training(stores, tmp_path, capsys):
    train, val = stores
    assert _train(train, val, "--log-json", tmp_path) == 1
    err = _error(capsys)
    assert "--log-json" in err and "is a directory" in err
    assert _train(train, val, "--log-json", tmp_path / "a.json", "--log-csv", tmp_path / "a.json") == 1
    assert "both name" in _error(capsys)
    (tmp_path / "file").write_text("x")
    assert _train(train, val, "--log-csv", tmp_path / "file" / "run.csv") == 1
    assert "is a file, not a folder" in _error(capsys)
    with pytest.raises(Trained):  # a folder still to be made is fine
        _train(train, val, "--log-csv", tmp_path / "new" / "run.csv")


@pytest.mark.parametrize("option", ["--checkpoint", "--log-json"])
def test_an_output_folder_that_cannot_be_written_is_refused_before_training(stores, tmp_path, capsys, monkeypatch,
                                                                             option):
    """A read-only folder failed only after the first epoch (--checkpoint: a torch traceback) or the
    whole run (--log-json). os.access says no on a read-only file system even for root; here it is
    told so for one folder, as a chmod would not stop root."""
    import fastprune._outputs as outputs

    train, val = stores
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = outputs.os.access
    monkeypatch.setattr(outputs.os, "access", lambda path, mode: path != locked and real_access(path, mode))
    assert _train(train, val, option, locked / "run.out") == 1
    err = _error(capsys)
    assert f"{option} {locked / 'run.out'}: cannot write in {locked} (permission denied)" in err
    assert _train(train, val, option, locked / "sub" / "run.out") == 1  # a folder it would make there
    assert f"cannot write in {locked}" in _error(capsys)


def test_an_existing_checkpoint_needs_resume(stores, tmp_path, capsys):
    train, val = stores
    checkpoint = tmp_path / "run.pt"
    checkpoint.write_bytes(b"an earlier run")
    assert _train(train, val, "--checkpoint", checkpoint) == 1
    assert "--resume continues that run" in _error(capsys)
    assert checkpoint.read_bytes() == b"an earlier run"
    with pytest.raises(Trained):
        _train(train, val, "--checkpoint", tmp_path / "fresh.pt")


def test_a_picture_name_matplotlib_cannot_write_is_refused_first(stores, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    train, val = stores
    assert _train(train, val, "--kept-grid", tmp_path / "kept.txt") == 1
    assert "--kept-grid" in _error(capsys)
    assert main(["bench", "--train", str(train), "--val", str(val), "--epochs", "1", "--seeds", "0",
                 "--strategies", "ucb", "--out", str(tmp_path / "b.json"), "--kept-grid", str(tmp_path / "k")]) == 1
    assert "image format" in _error(capsys)


def test_bench_out_on_a_folder_or_a_store_is_refused_before_any_run(stores, tmp_path, capsys):
    train, val = stores
    for out in (tmp_path, train):
        assert main(["bench", "--train", str(train), "--val", str(val), "--epochs", "1", "--seeds", "0",
                     "--strategies", "ucb", "--out", str(out)]) == 1
        assert "--out" in _error(capsys)


@pytest.fixture
def checkpoint(tmp_path):
    """A real one-epoch checkpoint of a run on a 64-sample store, and a different store of the same size."""
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (64, 8, 8, 3), dtype=np.uint8)
    train = from_arrays(images, np.arange(64) % 2, tmp_path / "train.beton", progress=False)
    other = from_arrays(images, np.arange(64) % 4, tmp_path / "other.beton", progress=False)
    run = tmp_path / "run.pt"
    assert main(["train", "--train", str(train), "--val", str(train), "--epochs", "1", "--width", "4",
                 "--batch-size", "16", "--no-progress", "--threads", "1", "--checkpoint", str(run)]) == 0
    return run, train, other


def test_scores_refuse_another_store_of_the_same_size(checkpoint, tmp_path, capsys):
    run, train, other = checkpoint
    capsys.readouterr()
    assert main(["scores", str(run), "--store", str(other), "--out", str(tmp_path / "s.csv")]) == 1
    assert "is not the store the run trained on" in _error(capsys)
    assert not (tmp_path / "s.csv").exists()
    assert main(["scores", str(run), "--store", str(train), "--out", str(tmp_path / "s.csv")]) == 0
    assert (tmp_path / "s.csv").read_text().splitlines()[0].endswith("label")


def test_a_truncated_checkpoint_is_named(checkpoint, tmp_path, capsys):
    run, train, _ = checkpoint
    cut = tmp_path / "cut.pt"
    data = run.read_bytes()
    cut.write_bytes(data[:len(data) // 2])
    capsys.readouterr()
    assert main(["scores", str(cut)]) == 1
    assert "cut.pt" in _error(capsys)


def test_the_writability_check_looks_at_the_folder_written_in(tmp_path, monkeypatch):
    """--tensorboard DIR was checked at DIR's parent (a writable /output mounted in a read-only
    root was refused). An existing log one may write is refused for its folder: it is replaced by
    a file written beside it (written in place, a full disk or a kill left it cut: a bench
    result's earlier runs were lost, in a failure-injection audit)."""
    import fastprune._outputs as outputs
    from fastprune.errors import ConfigError

    locked, board = tmp_path / "locked", tmp_path / "locked" / "tb"
    board.mkdir(parents=True)
    (locked / "run.json").write_text("{}")
    real_access = outputs.os.access
    denied = {locked}
    monkeypatch.setattr(outputs.os, "access", lambda path, mode: Path(path) not in denied and real_access(path, mode))
    assert outputs.check_output_folder(board, "--tensorboard") == board
    with pytest.raises(ConfigError, match="--log-json .*run.json: cannot write in .*locked \\(permission denied; "
                                          "run.json is replaced by a new file written beside it, never rewritten"):
        outputs.check_output_file(locked / "run.json", "--log-json", makes_folders=True)
    with pytest.raises(ConfigError, match="--log-json .*new.json: cannot write in .*locked"):
        outputs.check_output_file(locked / "new.json", "--log-json", makes_folders=True)
    # a link is followed: the new file goes beside its target, so that folder is the one checked
    (tmp_path / "open").mkdir()
    (tmp_path / "open" / "run.json").write_text("{}")
    (locked / "latest.json").symlink_to(tmp_path / "open" / "run.json")
    assert outputs.check_output_file(locked / "latest.json", "--log-json") == locked / "latest.json"
    (tmp_path / "open" / "into-locked.json").symlink_to(locked / "run.json")
    with pytest.raises(ConfigError, match="--log-json .*into-locked.json: cannot write in .*locked"):
        outputs.check_output_file(tmp_path / "open" / "into-locked.json", "--log-json")
    denied.add(board)
    with pytest.raises(ConfigError, match=r"--tensorboard .*tb: cannot write in .*tb \(permission denied\)"):
        outputs.check_output_folder(board, "--tensorboard")


# --- paths that reach an input another way; writes that fail (failure audit) -------------------------

def test_an_output_through_a_folder_still_to_be_made_and_dotdot_is_the_input(stores, tmp_path, capsys):
    """new/../train.beton does not exist while "new" does not: the check passed, the writer made
    "new", and the checkpoint (or log, or bench result) replaced the training store."""
    train, val = stores
    before = train.read_bytes()
    for option in ("--checkpoint", "--log-json", "--log-csv"):
        assert _train(train, val, option, tmp_path / f"new{option}" / ".." / train.name) == 1
        assert "is the input file" in _error(capsys)
    assert main(["bench", "--train", str(train), "--val", str(val), "--epochs", "1", "--seeds", "0",
                 "--strategies", "ucb", "--out", str(tmp_path / "new" / ".." / train.name)]) == 1
    assert "is the input file" in _error(capsys)
    assert train.read_bytes() == before


def test_an_output_linked_to_another_output_is_refused(stores, tmp_path, capsys):
    train, val = stores
    (tmp_path / "alias.json").symlink_to(tmp_path / "run.pt")
    assert _train(train, val, "--checkpoint", tmp_path / "run.pt", "--log-json", tmp_path / "alias.json") == 1
    assert "both name" in _error(capsys)


def test_bench_out_named_like_its_own_report_is_refused(stores, tmp_path, capsys):
    """--out r.md: the result JSON was overwritten by its markdown report, and --continue then
    failed with a JSONDecodeError traceback."""
    train, val = stores
    assert main(["bench", "--train", str(train), "--val", str(val), "--epochs", "1", "--seeds", "0",
                 "--strategies", "ucb", "--out", str(tmp_path / "r.md")]) == 1
    assert "--out and --out's report both name" in _error(capsys)


@pytest.mark.parametrize("content", ['{"runs": [', "", "[]"])
def test_bench_continue_on_a_damaged_result_is_one_line(stores, tmp_path, capsys, content):
    train, val = stores
    out = tmp_path / "r.json"
    out.write_text(content)
    assert main(["bench", "--train", str(train), "--val", str(val), "--epochs", "1", "--seeds", "0",
                 "--strategies", "ucb", "--out", str(out), "--continue"]) == 1
    assert f"--continue: {out} is not a" in _error(capsys)
    assert out.read_text() == content


def test_a_failed_log_write_names_the_file_and_keeps_the_previous_one(tmp_path, monkeypatch):
    """A full disk turned a complete log.json into 2 KB of invalid JSON, with an error naming no
    file ("[Errno 27] File too large")."""
    import errno
    import json
    import os

    from fastprune.errors import OutputError
    from fastprune.train.loop import save_csv, save_history

    log, table = tmp_path / "log.json", tmp_path / "log.csv"
    save_history(log, [{"epoch": 0, "loss": 1.0}])
    save_csv(table, [{"epoch": 0, "loss": 1.0}])
    before = {path: path.read_bytes() for path in (log, table)}

    real_replace = os.replace

    def disk_full(*args, **kwargs):
        raise OSError(errno.EFBIG, "File too large")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(OutputError, match=f"^cannot write {log}: File too large$"):
        save_history(log, [{"epoch": 0, "loss": 1.0}, {"epoch": 1, "loss": 0.5}])
    with pytest.raises(OutputError, match=f"^cannot write {table}: File too large$"):
        save_csv(table, [{"epoch": 0, "loss": 1.0}, {"epoch": 1, "loss": 0.5}])
    monkeypatch.setattr(os, "replace", real_replace)
    assert {path: path.read_bytes() for path in (log, table)} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.csv", "log.json"]  # no temporary file left
    assert json.loads(log.read_text())["history"] == [{"epoch": 0, "loss": 1.0}]


def test_an_interrupted_log_or_plot_write_leaves_no_temporary_file(tmp_path):
    pytest.importorskip("matplotlib")
    from fastprune._outputs import written_atomically

    target = tmp_path / "r_curves.png"
    target.write_bytes(b"the previous plot")
    target.chmod(0o644)
    with pytest.raises(KeyboardInterrupt):
        with written_atomically(target, binary=True) as file:
            file.write(b"half a pl")
            raise KeyboardInterrupt
    assert target.read_bytes() == b"the previous plot" and [p.name for p in tmp_path.iterdir()] == ["r_curves.png"]
    with written_atomically(target, binary=True) as file:
        file.write(b"new")
    assert target.read_bytes() == b"new" and target.stat().st_mode & 0o777 == 0o644  # its mode kept
    fresh = tmp_path / "fresh.png"
    with written_atomically(fresh, binary=True) as file:
        file.write(b"x")
    from fastprune.store._atomic import default_file_mode
    assert fresh.stat().st_mode & 0o777 == default_file_mode()  # as open() makes it (umask), not mkstemp's 0600


def test_ctrl_c_during_a_checkpoint_write_leaves_no_partial_file(tmp_path, monkeypatch):
    import torch

    from fastprune.train import checkpoints

    model = torch.nn.Linear(2, 2)
    path = tmp_path / "run.pt"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoints.torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        checkpoints.save_checkpoint(path, model, torch.optim.SGD(model.parameters(), lr=0.1), None, None, None, [])
    assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_written_through_a_link_replaces_its_target(tmp_path):
    """Checkpoints share the stores' and logs' atomic write: through a link (latest.pt ->
    runs/run5.pt) the target is replaced and the link kept (the link itself was replaced), and the
    temporary file of a run killed mid-save is removed by the next save."""
    import subprocess
    import sys

    import torch

    from fastprune.store._atomic import temp_prefix
    from fastprune.train import checkpoints

    model = torch.nn.Linear(2, 2)
    (tmp_path / "runs").mkdir()
    target = tmp_path / "runs" / "run5.pt"
    link = tmp_path / "latest.pt"
    link.symlink_to(target)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = tmp_path / "runs" / f"{temp_prefix(target, int(dead.stdout))}abc123.tmp"
    leftover.write_bytes(b"half a checkpoint")
    for history in ([{"epoch": 0}], [{"epoch": 0}, {"epoch": 1}]):
        checkpoints.save_checkpoint(link, model, torch.optim.SGD(model.parameters(), lr=0.1), None, None, None,
                                    history)
    assert link.is_symlink() and sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["run5.pt"]
    assert checkpoints.load_checkpoint(target, torch.nn.Linear(2, 2))[0] == 2


def test_ctrl_c_while_the_command_loads_is_one_line(monkeypatch, capsys):
    import fastprune.cli as cli

    def importing_torch(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", importing_torch)
    assert cli.main(["train", "--help"]) == 130
    assert capsys.readouterr().err.strip() == "fastprune train: interrupted"


def test_an_atomic_write_follows_links_keeps_modes_and_never_writes_in_place(tmp_path, monkeypatch):
    """Review of written_atomically: a symlinked log (latest.json -> runs/run5.json) was replaced by
    a plain file, a 0600 log became 0644. A folder that takes no new file (which the pre-flight
    check refuses) is an error that keeps the file whole: it was rewritten in place, and a full
    disk left it cut."""
    from fastprune._outputs import written_atomically
    from fastprune.store import _atomic

    (tmp_path / "runs").mkdir()
    target = tmp_path / "runs" / "run5.json"
    target.write_text("old")
    target.chmod(0o600)
    link = tmp_path / "latest.json"
    link.symlink_to(target)
    with written_atomically(link) as file:
        file.write("new")
    assert link.is_symlink() and target.read_text() == "new" and target.stat().st_mode & 0o777 == 0o600

    def folder_takes_no_new_file(name):
        raise PermissionError(13, "Permission denied", name)

    monkeypatch.setattr(_atomic, "create_exclusive", folder_takes_no_new_file)
    with pytest.raises(OSError, match=f"cannot write {target}: Permission denied"):
        with written_atomically(target) as file:
            file.write("in place")
    assert target.read_text() == "new"
    with pytest.raises(OSError, match=f"cannot write {tmp_path / 'runs' / 'absent.json'}: Permission denied"):
        with written_atomically(tmp_path / "runs" / "absent.json") as file:
            file.write("x")


def test_train_in_process_leaves_threads_denormals_and_random_streams_as_they_were(tmp_path):
    """A sweep calling main(["train", ...]) in one process ran every later run with the previous
    one's --threads and --flush-denormal, and with its seeds."""
    import random

    import torch

    from fastprune.bench.run import flushing_denormals

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (64, 8, 8, 3), dtype=np.uint8)
    train = from_arrays(images, np.arange(64) % 2, tmp_path / "train.beton", progress=False)
    torch.set_num_threads(2)
    torch.set_flush_denormal(False)
    random.seed(3)
    torch.manual_seed(3)
    assert _train(train, train, "--seed", "5", "--flush-denormal") == 0  # _train passes --threads 1
    state = (torch.get_num_threads(), flushing_denormals(), random.random(), torch.rand(1).item())
    random.seed(3)
    torch.manual_seed(3)
    assert state == (2, False, random.random(), torch.rand(1).item())
