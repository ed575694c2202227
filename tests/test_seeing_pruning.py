"""Seeing the pruning (issue 34 point 8): per-sample scores, times kept and last kept epoch
exported from a strategy or a train checkpoint; the kept-images grid; TensorBoard; per-class
accuracy; what bench records and plots."""

from __future__ import annotations

import csv
import pickle

import numpy as np
import pytest
import torch

import fastprune
from fastprune.cli import main
from fastprune.convert import from_arrays
from fastprune.errors import UsageWarning
from fastprune.prune import export_scores
from fastprune.prune.report import report_from_state
from test_extras import _hide  # makes an import fail as if the package were not installed


def _train_a_little(strategy, epochs=3, seed=0):
    rng = np.random.default_rng(seed)
    selections = []
    for epoch in range(epochs):
        selection = strategy.select(epoch)
        strategy.select(epoch)  # the loader asks again: counted once
        selections.append(selection.indices)
        losses = rng.random(len(selection)).astype(np.float32)
        strategy.update(selection.indices, losses, losses < 0.5)
    return selections


def test_times_kept_and_last_kept_epoch_are_counted_once_per_selected_epoch():
    strategy = fastprune.UCB(50, keep=0.4, seed=0, warmup_epochs=1)
    selections = _train_a_little(strategy, epochs=4)
    expected = np.zeros(50, np.int64)
    last = np.full(50, -1)
    for epoch, ids in enumerate(selections):
        expected[ids] += 1
        last[ids] = epoch
    assert selections[0].size == 50  # the warm-up epoch keeps everything
    np.testing.assert_array_equal(strategy.times_kept, expected)
    np.testing.assert_array_equal(strategy.last_kept_epoch, last)
    assert strategy.times_kept.dtype == np.uint32 and strategy.last_kept_epoch.dtype == np.int32
    strategy.num_selected(9)  # asking the size selects nothing
    np.testing.assert_array_equal(strategy.times_kept, expected)
    with pytest.raises(ValueError):
        strategy.times_kept[0] = 7


def test_times_kept_survive_a_checkpoint_and_old_checkpoints_still_load():
    strategy = fastprune.EpsilonGreedy(40, keep=0.5, seed=1)
    _train_a_little(strategy, epochs=3)
    state = strategy.state_dict()
    restored = fastprune.EpsilonGreedy(40, keep=0.5, seed=1)
    restored.load_state_dict(state)
    np.testing.assert_array_equal(restored.times_kept, strategy.times_kept)
    np.testing.assert_array_equal(restored.last_kept_epoch, strategy.last_kept_epoch)
    restored.select(2)  # the checkpoint's own epoch again (a resume repeats no count)
    np.testing.assert_array_equal(restored.times_kept, strategy.times_kept)

    old = {k: v for k, v in state.items() if k != "kept"}  # written before the counting existed
    legacy = fastprune.EpsilonGreedy(40, keep=0.5, seed=1)
    with pytest.warns(UsageWarning, match="times kept were not counted, so they count from here on"):
        legacy.load_state_dict(old)
    assert legacy.times_kept.sum() == 0 and (legacy.last_kept_epoch == -1).all()
    selected = legacy.select(3)
    assert legacy.times_kept.sum() == len(selected) and (legacy.last_kept_epoch[selected.indices] == 3).all()
    assert "times_kept" not in report_from_state(old)  # not zeros: unknown (tests/test_older_files.py)


@pytest.mark.parametrize("make", [
    lambda: fastprune.UCB(30, keep=0.5, seed=0), lambda: fastprune.EpsilonGreedy(30, keep=0.5, seed=0),
    lambda: fastprune.Forgetting(30, keep=0.5, seed=0, score_epochs=2),
    lambda: fastprune.InfoBatch(30, keep=0.5, epochs=4, seed=0), lambda: fastprune.UniformRandom(30, 0.5)])
def test_a_checkpoints_report_equals_the_live_strategys(make):
    strategy = make()
    _train_a_little(strategy, epochs=3)
    live, saved = strategy.sample_report(), report_from_state(strategy.state_dict())
    assert list(live) == ["index", "score", "loss", "seen", "times_kept", "last_kept_epoch"]
    for name in live:
        np.testing.assert_array_equal(live[name], saved[name], err_msg=name)


def test_export_scores_writes_csv_and_npz(tmp_path):
    strategy = fastprune.UCB(20, keep=0.5, seed=0)
    _train_a_little(strategy)
    report = strategy.sample_report()
    export_scores(strategy, tmp_path / "s.npz")
    with np.load(tmp_path / "s.npz") as saved:
        for name in report:
            np.testing.assert_array_equal(saved[name], report[name])
    export_scores(strategy, tmp_path / "s.csv")
    rows = list(csv.DictReader(open(tmp_path / "s.csv")))
    assert len(rows) == 20 and int(rows[3]["index"]) == 3
    assert [int(r["times_kept"]) for r in rows] == report["times_kept"].tolist()
    assert [int(r["last_kept_epoch"]) for r in rows] == report["last_kept_epoch"].tolist()
    assert float(rows[5]["score"]) == pytest.approx(float(report["score"][5]))
    with pytest.raises(fastprune.ConfigError, match=r"\.csv or \.npz"):
        export_scores(strategy, tmp_path / "s.txt")


def _store(tmp_path, n=40, names=("cat", "dog")):
    rng = np.random.default_rng(0)
    return from_arrays(rng.integers(0, 256, (n, 8, 8, 3), np.uint8), np.arange(n) % 2, tmp_path / "t.beton",
                       progress=False, class_names=list(names))


def _checkpoint(tmp_path, strategy):
    from fastprune.train.checkpoints import save_checkpoint

    model = torch.nn.Linear(2, 2)
    path = tmp_path / "run.pt"
    save_checkpoint(path, model, torch.optim.SGD(model.parameters(), lr=0.1), None, strategy, None,
                    [{"epoch": e} for e in range(3)])
    return path


def test_scores_command_exports_a_train_checkpoint_with_labels(tmp_path, capsys):
    store = _store(tmp_path)
    strategy = fastprune.UCB(40, keep=0.5, seed=0)
    _train_a_little(strategy)
    path = _checkpoint(tmp_path, strategy)
    assert main(["scores", str(path)]) == 0
    assert "never kept" in capsys.readouterr().out
    rows = list(csv.DictReader(open(tmp_path / "run_scores.csv")))
    assert [int(r["times_kept"]) for r in rows] == strategy.times_kept.tolist()
    assert main(["scores", str(path), "--out", str(tmp_path / "x.npz"), "--store", str(store)]) == 0
    with np.load(tmp_path / "x.npz") as saved:
        assert saved["label"].tolist() == (np.arange(40) % 2).tolist() and saved["class"][1] == "dog"
        np.testing.assert_array_equal(saved["score"], strategy.sample_report()["score"])
    assert main(["scores", str(tmp_path / "missing.pt")]) == 1
    with pytest.raises(SystemExit) as exit_:  # needs --store: a usage error
        main(["scores", str(path), "--grid", str(tmp_path / "g.png")])
    assert exit_.value.code == 2
    assert "--grid needs --store" in capsys.readouterr().err


def test_kept_grid_draws_most_and_never_kept_images_per_class(tmp_path, capsys, monkeypatch):
    from fastprune.prune.report import kept_order

    store = _store(tmp_path)
    strategy = fastprune.UCB(40, keep=0.25, seed=0)
    _train_a_little(strategy, epochs=2)
    report = strategy.sample_report()
    ids = np.flatnonzero(np.arange(40) % 2 == 1)
    order = kept_order(report, ids)
    assert report["times_kept"][order[0]] == report["times_kept"][ids].max()
    assert report["times_kept"][order[-1]] == 0  # 2 epochs at keep 0.25: some never kept
    path = fastprune.prune.kept_grid(strategy, store, tmp_path / "grid.png", per_class=3)
    import matplotlib.image

    picture = matplotlib.image.imread(path)
    assert picture.ndim == 3 and picture.shape[0] > 100 and picture.std() > 0
    checkpoint = _checkpoint(tmp_path, strategy)
    opened = []
    real_init = fastprune.Store.__init__
    monkeypatch.setattr(fastprune.Store, "__init__", lambda self, path: (opened.append(path), real_init(self, path))[1])
    assert main(["scores", str(checkpoint), "--store", str(store), "--grid", str(tmp_path / "g.png")]) == 0
    assert (tmp_path / "g.png").stat().st_size > 1000
    assert len(opened) == 1  # the CSV's labels and the grid's pictures from one opening (each checks every offset)



def test_kept_grid_without_matplotlib_names_the_plots_extra(tmp_path, monkeypatch):
    store = _store(tmp_path)
    _hide(monkeypatch, "matplotlib")
    with pytest.raises(fastprune.errors.MissingExtraError) as caught:
        fastprune.prune.kept_grid(fastprune.UCB(40, 0.5), store, tmp_path / "g.png")
    assert str(caught.value) == ('drawing the kept-images grid needs matplotlib, which is not installed: '
                                 'pip install "fastprune[plots]"')


def _fit_tiny(tmp_path, **options):
    from fastprune.loader import Normalize
    from fastprune.models import SmallResNet
    from fastprune.train import fit

    rng = np.random.default_rng(0)
    labels = np.arange(60) % 3
    images = (rng.integers(0, 60, (60, 8, 8, 3)) + 90 * labels[:, None, None, None]).astype(np.uint8)
    store = from_arrays(images, labels, tmp_path / "c.beton", progress=False, class_names=["ant", "bee", "cow"])
    normalize = Normalize([0.5] * 3, [0.25] * 3)
    strategy = fastprune.UCB(60, keep=0.5, seed=0)
    train = fastprune.Loader(store, 10, sampler=strategy, transforms=[normalize], seed=0)
    val = fastprune.Loader(store, 25, shuffle=False, transforms=[normalize])
    torch.manual_seed(0)
    model = SmallResNet(in_channels=3, num_classes=3, widths=(4,))
    history = fit(model, train, val, strategy, epochs=2, progress=False, log=None,
                  optimizer=torch.optim.SGD(model.parameters(), lr=0.05), **options)
    return store, strategy, history


def test_evaluation_records_per_class_accuracy_by_the_stores_class_names(tmp_path):
    from fastprune.train.loop import save_csv

    _, _, history = _fit_tiny(tmp_path, eval_every=2)
    assert history[0]["val_class_acc"] is None  # not evaluated
    per_class = history[-1]["val_class_acc"]
    assert list(per_class) == ["ant", "bee", "cow"]
    assert all(0 <= acc <= 100 for acc in per_class.values())
    assert sum(per_class.values()) / 3 == pytest.approx(history[-1]["val_acc"], abs=1e-3)  # 20 per class
    save_csv(tmp_path / "h.csv", history)
    rows = list(csv.DictReader(open(tmp_path / "h.csv")))
    assert float(rows[1]["val_class_acc.bee"]) == pytest.approx(per_class["bee"])


def _scalars(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_logger_writes_loss_accuracy_kept_fraction_and_overhead(tmp_path):
    pytest.importorskip("tensorboard")  # the tensorboard extra (installed with dev)
    from fastprune.train import TensorBoardLogger

    with TensorBoardLogger(tmp_path / "tb", num_samples=60) as logger:
        _, _, history = _fit_tiny(tmp_path, on_epoch_end=logger)
    scalars = _scalars(tmp_path / "tb")
    assert {"loss/train", "loss/val", "accuracy/val", "pruning/kept_fraction", "pruning/overhead_s",
            "accuracy_per_class/cow"} <= set(scalars)
    assert scalars["pruning/kept_fraction"] == [(1, 0.5), (2, 0.5)]
    assert scalars["accuracy/val"][-1] == (2, pytest.approx(history[-1]["val_acc"]))
    assert scalars["loss/train"][0] == (1, pytest.approx(history[0]["loss"]))


def test_train_writes_tensorboard_and_the_kept_grid_on_request(tmp_path, capsys, monkeypatch):
    pytest.importorskip("tensorboard")  # the tensorboard extra (installed with dev)
    store = _store(tmp_path, n=60, names=("cat", "dog"))
    argv = ["train", "--train", str(store), "--val", str(store), "--epochs", "2", "--width", "4", "--batch-size",
            "6", "--no-progress", "--threads", "1", "--keep", "0.5"]
    assert main([*argv, "--tensorboard", str(tmp_path / "tb"), "--kept-grid", str(tmp_path / "k.png")]) == 0
    assert f"wrote {tmp_path / 'k.png'}" in capsys.readouterr().out and (tmp_path / "k.png").stat().st_size > 1000
    assert _scalars(tmp_path / "tb")["pruning/kept_fraction"] == [(1, 0.5), (2, 0.5)]
    _hide(monkeypatch, "tensorboard")
    assert main([*argv, "--tensorboard", str(tmp_path / "tb2")]) == 1
    assert capsys.readouterr().err.strip() == ('fastprune train: error: --tensorboard needs tensorboard, which is not '
                                               'installed: pip install "fastprune[tensorboard]"')


def _runs(strategy, keep, accs_by_seed, block=None):
    return [{"strategy": strategy, "keep": keep, "seed": seed, "block": block or keep, "final_acc": accs[-1],
             "curve": [[10.0 * (i + 1) + seed, acc] for i, acc in enumerate(accs)]}
            for seed, accs in enumerate(accs_by_seed)]


def test_curves_plot_the_mean_over_seeds_with_a_band_and_name_the_validation_store(tmp_path):
    from fastprune.bench import plan, plots

    runs = _runs("full", 1.0, [[80, 90], [82, 92]], block=0.5) + _runs("ucb", 0.5, [[70, 88], [74, 90]])
    assert plots.mean_curve(runs[2:]) == ([10.5, 20.5], [72, 89], [70, 88], [74, 90])
    fig = plots.plot_curves(runs, tmp_path / "c.png", "mine.beton", "my-val.beton")
    axis = fig.axes[0]
    assert axis.get_ylabel() == "my-val.beton accuracy (%)"
    assert "mean of 2 seeds" in fig.texts[0].get_text() and "my-val.beton" in fig.texts[0].get_text()
    lines = {line.get_label(): list(line.get_ydata()) for line in axis.get_lines()}
    assert lines == {"full": [81, 91], "ucb": [72, 89]}
    assert len(axis.collections) == 2  # one band per strategy
    assert plan.evaluated_on({"data": {"val": "/data/my-val.beton"}}) == "my-val.beton"
    assert plan.evaluated_on({"data": {"val": plan.BUILT_IN_DATA}}) == "Fashion-MNIST test"


def test_curves_show_a_peak_above_every_final_accuracy(tmp_path):
    """A busy 2-core bench: eps-greedy's curve peaked at 30.5% and ended at 12.2%, UCB 27.9 -> 14.2,
    full ended at 26.8; the axis stopped at the best final + 1 (27.8), cutting both peaks off."""
    from fastprune.bench import plots

    runs = _runs("full", 1.0, [[18.8, 26.8]], block=0.5) + _runs("epsilon_greedy", 0.5, [[10.2, 30.5, 12.2]])
    axis = plots.plot_curves(runs, tmp_path / "c.png").axes[0]
    low, high = axis.get_ylim()
    assert high >= 30.5 and low <= 12.2 - 5


def test_bench_records_the_model_it_ran_and_writes_grids_and_tensorboard_per_run(tmp_path, monkeypatch, capsys):
    pytest.importorskip("tensorboard")  # the tensorboard extra (installed with dev)
    import json

    (tmp_path / "mymodels.py").write_text(
        "import torch\n"
        "class Tiny(torch.nn.Module):\n"
        "    def __init__(self, num_classes):\n"
        "        super().__init__()\n"
        "        self.head = torch.nn.Linear(3 * 8 * 8, num_classes)\n"
        "    def forward(self, x):\n"
        "        return self.head(x.flatten(1))\n"
        "def make(num_classes):\n"
        "    return Tiny(num_classes)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    store = _store(tmp_path, n=48)
    assert main(["bench", "--train", str(store), "--val", str(store), "--strategies", "ucb", "--keeps", "0.5",
                 "--seeds", "0", "1", "--epochs", "2", "--batch-size", "6", "--threads", "1", "--model",
                 "mymodels:make", "--out", "b.json", "--kept-grid", "k.png", "--tensorboard", "tb"]) == 0
    result = json.loads((tmp_path / "b.json").read_text())
    assert result["model"] == {"name": "mymodels:make"}  # not SmallResNet's widths
    assert result["architecture"] == {"spec": "mymodels:make", "class": "mymodels.Tiny", "parameters": 192 * 2 + 2}
    assert (tmp_path / "k-ucb-keep0.5-seed0.png").exists() and (tmp_path / "k-ucb-keep0.5-seed1.png").exists()
    assert not list(tmp_path.glob("k-full*"))
    assert sorted(p.name for p in (tmp_path / "tb").iterdir()) == [
        "full-keep1-seed0", "full-keep1-seed1", "ucb-keep0.5-seed0", "ucb-keep0.5-seed1"]
    assert (tmp_path / "b_curves.png").exists()
    assert "val_class_acc" in result["runs"][0]["history"][-1]


def test_continue_accepts_a_file_that_recorded_smallresnets_widths_for_a_custom_model(tmp_path):
    import json

    from fastprune.bench import plan
    from fastprune.bench.run import Settings
    from fastprune.train.recipe import RECIPE

    recipe = RECIPE.replace(name="mymodels:make")
    result = plan.new_result(plan.FULL_MODE, Settings(threads=1, amp="off"), False, recipe)
    assert result["model"] == {"name": "mymodels:make"}
    result["architecture"] = {"spec": "mymodels:make", "class": "mymodels.Tiny", "parameters": 386}  # as execute adds
    result["model_code"] = {"layers": "0123456789abcdef", "code": "fedcba9876543210"}
    old = json.loads(json.dumps(result))
    old["model"] = {"name": "mymodels:make", "widths": [32, 64, 128], "blocks": 1, "stem_stride": 2}
    plan.check_can_continue(old, result, tmp_path / "b.json")  # accepted
    old["model"] = {"name": "other:make"}
    with pytest.raises(fastprune.errors.ConfigError, match="was measured with model = "):
        plan.check_can_continue(old, result, tmp_path / "b.json")


# ---- seeing-the-pruning audit (2026-12-06) ------------------------------------------------------

def test_a_sharded_full_epoch_does_not_count_the_spare_sample_it_leaves_out():
    # 7 samples on 2 ranks: rank 0's shard of 4 visits 3 per full epoch (every rank the same steps)
    strategy = fastprune.UCB(7, keep=0.5, seed=0, warmup_epochs=2, distributed=("sharded", 0, 2))
    counted = np.zeros(7, np.int64)
    for epoch in range(2):
        counted[strategy.select(epoch).indices] += 1
    report = strategy.sample_report()
    assert report["times_kept"].tolist() == counted[report["index"]].tolist()
    assert sorted(report["times_kept"].tolist()) == [1, 1, 2, 2]  # each epoch left a different one out


def test_tensorboard_folders_hold_one_run_each(tmp_path, capsys):
    pytest.importorskip("tensorboard")  # the tensorboard extra (installed with dev)
    store = _store(tmp_path, n=60, names=("cat", "dog"))
    argv = ["train", "--train", str(store), "--val", str(store), "--epochs", "2", "--width", "4", "--batch-size",
            "6", "--no-progress", "--threads", "1", "--keep", "0.5", "--tensorboard", str(tmp_path / "tb")]
    assert main([*argv, "--checkpoint", str(tmp_path / "a.pt")]) == 0
    capsys.readouterr()
    assert main(argv) == 1  # a second run would draw as one zig-zagging curve with the first
    assert capsys.readouterr().err.startswith(f"fastprune train: error: --tensorboard: {tmp_path / 'tb'} already "
                                              "holds a run's TensorBoard events")
    assert main([*argv, "--checkpoint", str(tmp_path / "a.pt"), "--resume"]) == 0  # continues its own curves
    # --resume with no checkpoint yet starts a run: it was let into the folder of another (a train audit)
    assert main([*argv, "--checkpoint", str(tmp_path / "new.pt"), "--resume"]) == 1
    assert "already holds a run's TensorBoard events" in capsys.readouterr().err
    # a run refused before its first epoch writes no event file
    assert main([*argv[:-1], str(tmp_path / "tb2"), "--checkpoint", str(tmp_path / "a.pt"), "--resume",
                 "--batch-size", "7"]) == 1
    assert not (tmp_path / "tb2").exists() or not list((tmp_path / "tb2").iterdir())


def test_bench_refuses_a_tensorboard_folder_of_earlier_runs_and_overwrite_replaces_each_runs_events(tmp_path):
    pytest.importorskip("tensorboard")  # the tensorboard extra (installed with dev)
    from fastprune.train.tensorboard import event_files

    store = _store(tmp_path, n=48)
    argv = ["bench", "--train", str(store), "--val", str(store), "--strategies", "ucb", "--keeps", "0.5", "--seeds",
            "0", "--epochs", "2", "--batch-size", "6", "--threads", "1", "--width", "4",
            "--tensorboard", str(tmp_path / "tb")]
    assert main([*argv, "--out", str(tmp_path / "a.json")]) == 0
    assert main([*argv, "--out", str(tmp_path / "b.json")]) == 1  # another result, the same run folders
    assert main([*argv, "--out", str(tmp_path / "a.json"), "--overwrite"]) == 0
    for run in ("full-keep1-seed0", "ucb-keep0.5-seed0"):
        assert len(event_files(tmp_path / "tb" / run)) == 1, run  # replaced, not a second one beside it
        assert [step for step, _ in _scalars(tmp_path / "tb" / run)["loss/train"]] == [1, 2]


def test_a_fit_checkpoint_names_its_store_so_scores_refuse_another(tmp_path):
    store = _store(tmp_path, n=40)
    other = from_arrays(np.zeros((40, 8, 8, 3), np.uint8), np.zeros(40, np.int64), tmp_path / "other.beton",
                        progress=False)
    strategy = fastprune.UCB(40, keep=0.5, seed=0)
    loader = fastprune.Loader(store, 8, sampler=strategy, threads=1, transforms=[fastprune.loader.Normalize()])
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
    fastprune.train.fit(model, loader, None, strategy, epochs=1, checkpoint=tmp_path / "run.pt", progress=False,
                        log=None)
    assert main(["scores", str(tmp_path / "run.pt"), "--store", str(store), "--out", str(tmp_path / "a.csv")]) == 0
    assert main(["scores", str(tmp_path / "run.pt"), "--store", str(other), "--out", str(tmp_path / "b.csv")]) == 1
    assert not (tmp_path / "b.csv").exists()


def test_kept_grid_of_a_small_class_shows_each_sample_once(tmp_path, monkeypatch):
    from fastprune.prune import report as report_module

    store = _store(tmp_path, n=10)  # 5 per class, 3 most + 3 least asked: 2 left for the right side
    strategy = fastprune.UCB(10, keep=0.5, seed=0)
    _train_a_little(strategy, epochs=3)
    drawn = []
    real_image = report_module._image
    monkeypatch.setattr(report_module, "_image",
                        lambda source, sample: drawn.append(sample) or real_image(source, sample))
    fastprune.prune.kept_grid(strategy, store, tmp_path / "grid.png", per_class=3)
    assert sorted(drawn) == list(range(10))  # every sample once: none on both sides


def test_scores_grid_of_a_checkpoint_without_times_kept_writes_nothing(tmp_path, capsys):
    store = _store(tmp_path)
    strategy = fastprune.UCB(40, keep=0.5, seed=0, track_kept=False)
    _train_a_little(strategy)
    path = _checkpoint(tmp_path, strategy)
    assert main(["scores", str(path), "--store", str(store), "--grid", str(tmp_path / "g.png")]) == 1
    assert "--grid needs times kept" in capsys.readouterr().err
    assert not (tmp_path / "run_scores.csv").exists() and not (tmp_path / "g.png").exists()


def test_csv_of_a_run_not_evaluated_every_epoch_keeps_the_per_class_columns_in_place(tmp_path):
    from fastprune.train.loop import save_csv

    history = [{"epoch": 0, "val_acc": None, "val_class_acc": None, "lr": 0.1},
               {"epoch": 1, "val_acc": 50.0, "val_class_acc": {"cat": 40.0, "dog": 60.0}, "lr": 0.05}]
    save_csv(tmp_path / "h.csv", history)
    lines = (tmp_path / "h.csv").read_text().splitlines()
    assert lines == ["epoch,val_acc,val_class_acc.cat,val_class_acc.dog,lr", "0,,,,0.1", "1,50.0,40.0,60.0,0.05"]


def test_one_shards_scores_come_by_sample_id_and_tie_by_id(tmp_path):
    from fastprune.prune.report import kept_order

    strategy = fastprune.UCB(41, keep=0.5, seed=0, distributed=("sharded", 1, 2))
    report = strategy.sample_report()  # nothing kept or scored yet: every row ties
    assert list(kept_order(report, np.arange(len(report["index"])))) == list(np.argsort(report["index"]))
    export_scores(strategy, tmp_path / "s.csv")
    ids = [int(row["index"]) for row in csv.DictReader(open(tmp_path / "s.csv"))]
    assert ids == sorted(report["index"].tolist()) and ids != report["index"].tolist()


def test_train_refuses_a_kept_grid_of_full_data(tmp_path, capsys):
    store = _store(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--train", str(store), "--val", str(store), "--strategy", "full", "--kept-grid",
              str(tmp_path / "k.png")])
    assert exit_.value.code == 2
    assert "--strategy full keeps every sample every epoch" in capsys.readouterr().err


def test_tensorboard_logger_writes_nothing_unused_and_its_writer_works_before_training(tmp_path):
    pytest.importorskip("tensorboard")  # the tensorboard extra (installed with dev)
    from fastprune.train import TensorBoardLogger
    from fastprune.train.tensorboard import event_files

    TensorBoardLogger(tmp_path / "unused").close()
    assert event_files(tmp_path / "unused") == []
    with TensorBoardLogger(tmp_path / "tb") as logger:
        logger.writer.add_scalar("setup/lr", 0.1, 0)  # before any epoch, as a SummaryWriter allows
    assert _scalars(tmp_path / "tb")["setup/lr"] == [(0, pytest.approx(0.1))]


def test_scores_of_a_missing_checkpoint_or_a_folder_is_one_line_naming_it(tmp_path, capsys):
    """They printed Python's '[Errno 2] No such file or directory: ...' and '[Errno 21] ...'."""
    missing, folder = tmp_path / "missing.pt", tmp_path / "folder.pt"
    folder.mkdir()
    assert main(["scores", str(missing)]) == 1
    assert capsys.readouterr().err == f"fastprune scores: error: {missing}: no such checkpoint file\n"
    assert main(["scores", str(folder)]) == 1
    assert capsys.readouterr().err == f"fastprune scores: error: {folder}: cannot read the checkpoint: Is a directory\n"
    with pytest.raises(fastprune.errors.CheckpointError, match="no such checkpoint file"):
        fastprune.train.load_checkpoint(missing, torch.nn.Linear(1, 1), None)
    with pytest.raises(FileNotFoundError) as caught:  # what a loop that starts over without one catches
        fastprune.train.load_checkpoint(missing, torch.nn.Linear(1, 1), None)
    assert caught.value.filename == str(missing) and pickle.loads(pickle.dumps(caught.value)).filename == str(missing)


def test_scores_refuses_an_out_suffix_before_reading_the_checkpoint(tmp_path, capsys):
    """--out s.txt was refused only after the checkpoint was loaded, naming export_scores."""
    missing = tmp_path / "missing.pt"
    assert main(["scores", str(missing), "--out", str(tmp_path / "s.txt")]) == 1
    assert capsys.readouterr().err == (f"fastprune scores: error: --out {tmp_path / 's.txt'}: the report is a .csv "
                                       "or .npz file, not '.txt'\n")
