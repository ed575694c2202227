"""The command line's parsing, option passing, exit codes and the main job where no other test pinned
them down (mutation audit of cli.py, main_job.py, errors.py, __main__.py)."""

from __future__ import annotations

import numpy as np
import pytest
from test_convert_image_folder_layout import _tree

import fastprune
from fastprune.cli import build_parser, main

STORES = ["--train", "t.beton", "--val", "v.beton"]


# --- the edge values an argument type accepts (the Python API takes them too) ---------------------

@pytest.mark.parametrize("command, arguments, dest, expected", [
    ("train", ["--keep", "1"], "keep", 1.0),                          # keep everything: a full-data run
    ("bench", ["--keeps", "0.5", "1.0"], "keeps", [0.5, 1.0]),
    ("train", ["--seed", str(2**64 - 1)], "seed", 2**64 - 1),          # as UCB(seed=2**64 - 1) takes it
    ("bench", ["--seeds", "0", str(2**64 - 1)], "seeds", [0, 2**64 - 1]),
    ("train", ["--label-smoothing", "0"], "label_smoothing", 0.0),     # smoothing switched off
    ("train", ["--label-smoothing", "1"], "label_smoothing", 1.0),
    ("train", ["--weight-decay", "0"], "weight_decay", 0.0),           # no weight decay
    ("train", ["--pad", "0"], "pad", 0),                               # flip only
])
def test_the_closed_ends_of_each_range_are_accepted(command, arguments, dest, expected):
    args = build_parser(command).parse_args([command, *STORES, *arguments])
    assert getattr(args, dest) == expected


def test_convert_accepts_quality_100_and_refuses_a_zero_side(capsys):
    args = build_parser().parse_args(["convert", "src", "-o", "o.beton", "--quality", "100", "--resize", "2x3"])
    assert (args.quality, args.resize) == (100, (2, 3))
    for bad in ("0x4", "4x0"):
        with pytest.raises(SystemExit) as exit_:
            build_parser().parse_args(["convert", "src", "-o", "o.beton", "--resize", bad])
        assert exit_.value.code == 2
        assert f"argument --resize: sides must be positive, got '{bad}'" in capsys.readouterr().err


def test_convert_resize_is_height_by_width(tmp_path):
    """--resize 6x10: every image 6 rows tall and 10 columns wide (as its help and error messages say)."""
    _tree(tmp_path / "tree", ["a", "b"], per_class=1)  # two 6x6 images
    out = tmp_path / "r.beton"
    assert main(["convert", str(tmp_path / "tree"), "-o", str(out), "--resize", "6x10", "--workers", "1",
                 "--no-progress"]) == 0
    store = fastprune.Store(out)
    assert [store[i][0].shape for i in range(2)] == [(6, 10, 3)] * 2


def test_columns_needs_two_non_empty_names(capsys):
    assert build_parser().parse_args(["convert", "d", "-o", "o.beton", "--columns", " img , y "]).columns == ("img", "y")
    for bad in ("img,", ",y", "img"):
        with pytest.raises(SystemExit) as exit_:
            build_parser().parse_args(["convert", "d", "-o", "o.beton", "--columns", bad])
        assert exit_.value.code == 2
        assert f"argument --columns: expected IMAGE,LABEL (two column names), got '{bad}'" in capsys.readouterr().err


def test_class_names_file_ending_in_blank_lines_is_accepted(tmp_path):
    """An editor's trailing blank lines (or a trailing comma) name no class; a blank line inside is refused."""
    (tmp_path / "names.txt").write_text("cat\ndog \n\n  \n")
    parse = lambda value: build_parser().parse_args(["convert", "d", "-o", "o.beton", "--class-names", value])
    assert parse(f"@{tmp_path / 'names.txt'}").class_names == ["cat", "dog"]
    assert parse("cat,dog,").class_names == ["cat", "dog"]


# --- the main job (python -m fastprune.main_job): its steps with fastprune's commands recorded ----------

@pytest.fixture
def recorded(monkeypatch):
    """cli.main replaced by a recorder; ``codes`` sets a command's exit code (default 0)."""
    from fastprune import main_job

    calls, codes = [], {}

    def fake_main(argv):
        calls.append(list(argv))
        return codes.get(argv[0], 0)

    monkeypatch.setattr(main_job.cli, "main", fake_main)
    return main_job, calls, codes


def test_main_job_converts_each_split_to_its_own_file_then_describes_then_benches(recorded, tmp_path, capsys):
    main_job, calls, _ = recorded
    data = tmp_path / "runs" / "data"  # folders still to be made
    assert main_job.main(["--data-dir", str(data), "--device", "cpu"]) == 0
    assert data.is_dir()
    assert calls == [
        ["convert", "fashion-mnist", "--split", "train", "--out", str(data / "fashion-mnist-train.beton")],
        ["convert", "fashion-mnist", "--split", "test", "--out", str(data / "fashion-mnist-test.beton")],
        ["info", str(data / "fashion-mnist-train.beton")],
        ["bench", "--workdir", str(data), "--device", "cpu", "--quick", "--overwrite"],  # measured afresh
    ]
    said = capsys.readouterr().out
    assert ("fastprune bench --device cpu --quick --overwrite (the full benchmark: bash scripts/run main "
            "--bench)") in said
    main_job.main(["--data-dir", str(data), "--device", "cpu", "--bench", "--epochs", "3"])
    assert calls[-1] == ["bench", "--workdir", str(data), "--device", "cpu", "--epochs", "3", "--overwrite"]
    assert "the full benchmark" not in capsys.readouterr().out  # not a quick run: no pointer to itself
    main_job.main(["--data-dir", str(data), "--device", "cpu", "--bench", "--continue"])
    assert calls[-1] == ["bench", "--workdir", str(data), "--device", "cpu", "--continue"]  # adds to the file


@pytest.mark.parametrize("failing, code", [("convert", 1), ("info", 1), ("bench", 130)])
def test_main_job_stops_at_a_failed_step_with_its_exit_code(recorded, tmp_path, failing, code):
    main_job, calls, codes = recorded
    codes[failing] = code
    try:
        result = main_job.main(["--data-dir", str(tmp_path), "--device", "cpu"])
    except SystemExit as exit_:
        result = exit_.code
    assert result == code
    assert calls[-1][0] == failing  # nothing ran after it


@pytest.mark.parametrize("damage", ["flipped_byte", "not_a_store"])
def test_main_job_reconverts_a_store_that_fails_verification(recorded, tmp_path, capsys, damage):
    """data/ is kept between runs: a store damaged there (a bit flip, a half-copied file) is
    converted again, not trusted (a flipped pixel) nor a crash (a file that is no store)."""
    from fastprune.convert import from_arrays

    main_job, calls, _ = recorded
    train = tmp_path / "fashion-mnist-train.beton"
    images = np.random.default_rng(0).integers(0, 256, (32, 8, 8, 3), dtype=np.uint8)
    from_arrays(images, np.arange(32) % 2, train, progress=False)
    data = bytearray(train.read_bytes())
    if damage == "flipped_byte":
        start = data.index(images[0].tobytes())  # the first image's pixels
        data[start + 5] ^= 0xFF
    else:
        data[:64] = bytes(64)
    train.write_bytes(bytes(data))
    assert main_job.main(["--data-dir", str(tmp_path), "--device", "cpu"]) == 0
    assert calls[0][:4] == ["convert", "fashion-mnist", "--split", "train"]  # converted again
    said = capsys.readouterr().out
    assert said.startswith(f"{train}: ") and "; reconverting" in said


# --- warnings and errors on the command line -----------------------------------------------------------

@pytest.fixture
def info_warning(monkeypatch):
    """`fastprune info` replaced by a command that warns ``warnings`` (category, text) and returns 0."""
    import warnings

    import fastprune.cli as cli

    said = []

    def run(args):
        for category, text in said:
            warnings.warn(text, category)
        return 0

    monkeypatch.setattr(cli, "run_info", run)
    return said


def test_only_fastprunes_own_warnings_are_cut_to_one_line(info_warning, capsys):
    from fastprune.errors import SourceWarning

    info_warning += [(SourceWarning, "class folders look like splits"), (RuntimeWarning, "a library's own")]
    with pytest.warns(RuntimeWarning, match="a library's own"):  # shown as Python shows it, not rewritten
        assert main(["info", "x.beton"]) == 0
    assert capsys.readouterr().err == "fastprune info: warning: class folders look like splits\n"


def test_a_warning_quoting_a_files_text_is_escaped(info_warning, capsys):
    """A class folder named with terminal escapes is quoted in a warning: printed escaped, as errors are."""
    from fastprune.errors import SourceWarning

    info_warning.append((SourceWarning, "folder \x1b[2Jcats\x07 looks odd"))
    assert main(["info", "x.beton"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("fastprune info: warning: folder ") and "\x1b" not in err and "\x07" not in err


def test_convert_coarse_stores_cifar100s_coarse_labels(tmp_path):
    from test_convert_cifar import as_rows, cifar_images, write_py2_pickle

    write_py2_pickle(tmp_path / "train", {b"data": as_rows(cifar_images(3, 1)), b"fine_labels": [3, 4, 5],
                                          b"coarse_labels": [1, 0, 1]})
    out = tmp_path / "c.beton"
    assert main(["convert", str(tmp_path), "-o", str(out), "--kind", "cifar100", "--coarse", "--no-progress"]) == 0
    store = fastprune.Store(out)
    assert list(store.fields) == ["image", "label", "coarse_label"]
    assert [store[i][1:] for i in range(3)] == [(3, 1), (4, 0), (5, 1)]


def test_main_in_process_leaves_pythons_warning_display_as_it_found_it(info_warning):
    """A script calling main() (a sweep) would otherwise see its own later warnings printed as
    `fastprune info: warning: ...` lines."""
    import warnings

    before = warnings.showwarning
    assert main(["info", "x.beton"]) == 0
    assert warnings.showwarning is before


def test_no_command_prints_the_usage_on_stderr_and_exits_2(capsys):
    assert main([]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("usage: fastprune")


def test_sigterm_during_a_command_ends_it_as_terminated_with_143(monkeypatch, capsys):
    """A batch scheduler's stop (SIGTERM) ends a command as Ctrl-C does, but says so and exits 143
    (128 + 15), as a shell reports a terminated job. The handler is called directly: no signal sent."""
    import signal

    import fastprune.cli as cli

    def run(args):
        handler = signal.getsignal(signal.SIGTERM)
        assert callable(handler), f"SIGTERM would kill the command outright (handler {handler!r})"
        handler(signal.SIGTERM, None)  # raises KeyboardInterrupt("terminated ...")

    monkeypatch.setattr(cli, "run_info", run)
    assert main(["info", "x.beton"]) == 143
    assert capsys.readouterr().err == "fastprune info: terminated\n"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored after the command

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "run_info", interrupted)
    assert main(["info", "x.beton"]) == 130
    assert capsys.readouterr().err == "fastprune info: interrupted\n"


def test_an_error_quoting_a_path_with_terminal_escapes_is_printed_escaped(tmp_path, capsys):
    missing = tmp_path / "a\x1b[2Jb.beton"
    assert main(["info", str(missing)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fastprune info: error: ") and "no such store file" in err
    assert "\x1b" not in err and err.count("\n") == 1


# --- errors.py: what callers catch and what travels back from a worker process ----------------------------

def test_missing_files_pickle_back_with_their_message_path_and_hint(tmp_path):
    """Errors raised in a worker process travel back pickled: the message (hint included), the
    path as given and the classes callers catch must survive the trip."""
    import pickle

    from fastprune.errors import SourceNotFoundError, StoreError, StoreNotFoundError

    with pytest.raises(FileNotFoundError) as caught:
        fastprune.Store(tmp_path / "none.beton")
    store_error = caught.value
    source_error = SourceNotFoundError("source", tmp_path / "none", " (shortcuts: fashion-mnist)")
    for error in (store_error, source_error):
        back = pickle.loads(pickle.dumps(error))
        assert type(back) is type(error) and str(back) == str(error)
        assert back.filename == error.filename and back.errno == error.errno
    assert isinstance(store_error, StoreNotFoundError) and isinstance(store_error, StoreError)
    assert str(store_error) == f"{tmp_path / 'none.beton'}: no such store file"
    assert str(source_error) == f"source not found: {tmp_path / 'none'} (shortcuts: fashion-mnist)"


def test_an_os_error_from_any_command_is_one_line_and_exit_1(monkeypatch, capsys):
    """An I/O error fastprune did not wrap (a disk failing mid-read, a file made unreadable) ends
    as its own errors do: one line naming the file, exit code 1, no traceback."""
    import errno

    import fastprune.cli as cli

    def failing(args):
        raise OSError(errno.EIO, "Input/output error", str(args.file))

    monkeypatch.setattr(cli, "run_info", failing)
    assert main(["info", "disk.beton"]) == 1
    assert capsys.readouterr().err == "fastprune info: error: [Errno 5] Input/output error: 'disk.beton'\n"


def test_convert_warns_of_a_file_it_leaves_out_in_one_line(tmp_path, capsys):
    """An image folder's stray file (notes.txt) is named in one `fastprune convert: warning:` line,
    as every fastprune warning on the command line is, not in Python's two-line warning format."""
    _tree(tmp_path / "tree", ["a", "b"], per_class=1)
    (tmp_path / "tree" / "a" / "notes.txt").write_text("where these came from")
    assert main(["convert", str(tmp_path / "tree"), "-o", str(tmp_path / "o.beton"), "--workers", "1",
                 "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert err.startswith(f"fastprune convert: warning: {tmp_path / 'tree'}: ignored 1 file that is not ")
    assert err.count("\n") == 1 and "a/notes.txt" in err


def test_a_checkpoint_write_error_quotes_the_first_line_of_torchs_message(tmp_path, monkeypatch):
    """torch's errors run over many lines, the cause on the first: the one-line error keeps that one."""
    from test_hardening import _checkpoint_parts

    from fastprune.errors import CheckpointError
    from fastprune.train import checkpoints

    model, optimizer, strategy = _checkpoint_parts()

    def failing(state, file):
        raise RuntimeError("[enforce fail at inline_container.cc:672] unexpected pos 64 vs 0\nframe #0: c10::Error\n"
                           "frame #1: caffe2::serialize::PyTorchStreamWriter")

    monkeypatch.setattr(checkpoints.torch, "save", failing)
    with pytest.raises(CheckpointError, match=r"run.pt: cannot write the checkpoint \(\[enforce fail at "
                                              r"inline_container.cc:672\] unexpected pos 64 vs 0\); the previous"):
        checkpoints.save_checkpoint(tmp_path / "run.pt", model, optimizer, None, strategy, None, [{"epoch": 0}])


def test_config_errors_are_value_errors_for_python_callers():
    """A bad option value from Python is caught by `except ValueError`, as for any library."""
    from fastprune.errors import ConfigError
    from fastprune.train.device import resolve_device

    with pytest.raises(ValueError, match="device must be auto, cpu, cuda or cuda:N, got 'gpu0'") as caught:
        resolve_device("gpu0")
    assert isinstance(caught.value, ConfigError)


def test_a_diverged_training_run_ends_in_one_line(tmp_path, monkeypatch, capsys):
    """A NaN loss (learning rate too high) is the user's setting, not a bug: one line, exit 1."""
    from test_train_cli_boundaries import _args, _store

    import fastprune.train.cli as train_cli
    from fastprune.errors import TrainingDiverged

    def diverged(*args, **kwargs):
        raise TrainingDiverged("epoch 0, step 3: the loss is nan (sample 17); lower --lr")

    monkeypatch.setattr(train_cli, "run_recipe", diverged)
    train = _store(tmp_path / "t.beton", 0)
    assert main(_args(train, train)) == 1
    assert capsys.readouterr().err == "fastprune train: error: epoch 0, step 3: the loss is nan (sample 17); lower --lr\n"


def test_bench_refuses_continue_with_overwrite(capsys):
    """Both were accepted, and --continue silently won."""
    with pytest.raises(SystemExit) as exit_:
        build_parser("bench").parse_args(["bench", "--continue", "--overwrite"])
    assert exit_.value.code == 2
    assert "argument --overwrite: not allowed with argument --continue" in capsys.readouterr().err


def test_options_that_do_not_go_together_are_usage_errors(tmp_path, capsys):
    """--resume without --checkpoint exited 1 through SystemExit, without "error:" or the usage
    that argparse's own refusals print with exit 2."""
    with pytest.raises(SystemExit) as exit_:
        main(["train", *STORES, "--resume"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: fastprune train") and err.endswith("fastprune train: error: --resume needs --checkpoint\n")
    with pytest.raises(fastprune.errors.UsageError, match="^--resume needs --checkpoint$"):  # a ConfigError in Python
        from fastprune.train.cli import _train
        _train(build_parser("train").parse_args(["train", *STORES, "--resume"]))
