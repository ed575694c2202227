"""fastprune bench: the summary arithmetic against hand-computed values, and a tiny real run
(2,000 Fashion-MNIST images, 2 epochs) that writes every output and continues with --continue."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fastprune.bench import cli, machine, plan
from fastprune.errors import ConfigError, ConversionError
from fastprune.bench import report as bench_report
from fastprune.bench import run as bench_run
from fastprune.store.reader import verify_file
from fastprune.train import recipe


def _run(strategy, keep, seed, acc, wall, curve, overhead=0.01):
    return {"strategy": strategy, "keep": keep, "seed": seed, "final_acc": acc, "wall_s": wall,
            "curve": curve, "scoring_s": 0.0, "pruning_overhead_s": overhead}


def test_summary_matches_hand_computed_means_speedups_and_target_times():
    runs = [
        _run("full", 1.0, 0, 92.0, 100.0, [[50.0, 90.0], [100.0, 92.0]]),
        _run("full", 1.0, 1, 93.0, 120.0, [[60.0, 91.0], [120.0, 93.0]]),
        # target = mean full accuracy 92.5 - 0.5 = 92.0
        _run("ucb", 0.5, 0, 92.1, 50.0, [[25.0, 91.0], [50.0, 92.1]], overhead=0.5),
        _run("ucb", 0.5, 1, 91.9, 60.0, [[30.0, 91.5], [60.0, 91.9]], overhead=0.3),
        _run("uniform_random", 0.5, 0, 92.4, 40.0, [[20.0, 92.0], [40.0, 92.4]]),
    ]
    rows = {(row["strategy"], row["keep"]): row for row in bench_report.summarize(runs)}
    full, ucb, uniform = rows["full", 1.0], rows["ucb", 0.5], rows["uniform_random", 0.5]

    assert full["acc_mean"] == pytest.approx(92.5)
    assert full["acc_std"] == pytest.approx(0.5 ** 0.5)  # sample std of 92 and 93
    assert full["speedup"] == pytest.approx(1.0)
    assert ucb["acc_mean"] == pytest.approx(92.0)
    assert ucb["acc_delta_pt"] == pytest.approx(-0.5)
    assert ucb["speedup"] == pytest.approx(110.0 / 55.0)
    assert ucb["reached_target"] == "1/2" and ucb["time_to_target_s"] is None  # seed 1 never got there
    assert ucb["overhead_share_pct"] == pytest.approx(100 * (0.5 / 50 + 0.3 / 60) / 2)
    assert uniform["time_to_target_s"] == pytest.approx(20.0) and uniform["reached_target"] == "1/1"
    assert [row["strategy"] for row in bench_report.summarize(runs)] == ["full", "uniform_random", "ucb"]

    table = bench_report.pivot_table(bench_report.summarize(runs))
    header, _, keep_row = table.splitlines()
    assert header == "| keep | uniform_random | ucb |"
    assert keep_row == "| 0.5 | 92.40 (1 seed) / 2.75x | 92.00 ± 0.14 / 2.00x |"  # one seed: no spread measured


def test_total_time_counts_training_and_evaluation_of_every_run():
    runs = [{"wall_s": 3000.0, "eval_s": 600.0}, {"wall_s": 3300.0, "eval_s": 300.0}]
    assert bench_report.total_time(runs) == "2 runs, 2.00 h of training + evaluation in all.\n\n"


def test_time_to_target_is_the_first_epoch_at_or_above_it():
    curve = [[1.0, 80.0], [2.0, 92.0], [3.0, 91.0], [4.0, 93.0]]
    assert bench_report.time_to_target(curve, 92.0) == 2.0
    assert bench_report.time_to_target(curve, 93.5) is None


def test_planned_runs_open_every_keep_block_with_a_baseline():
    mode = {"seeds": (0, 1), "keeps": (0.3, 0.5), "strategies": ("ucb", "el2n")}
    runs = plan.planned_runs(mode)
    assert runs[:3] == [("full", 1.0, 0, 0.3), ("ucb", 0.3, 0, 0.3), ("el2n", 0.3, 0, 0.3)]
    assert [run for run in runs if run[0] == "full"] == [
        ("full", 1.0, seed, keep) for seed in (0, 1) for keep in (0.3, 0.5)]
    assert len(runs) == 2 * 2 * (1 + 2) and len(set(runs)) == len(runs)


def test_repeated_baselines_count_once_per_seed_for_accuracy_and_every_time_for_wall_clock():
    runs = [
        {**_run("full", 1.0, 0, 92.0, 100.0, [[100.0, 92.0]]), "block": 0.3},
        {**_run("full", 1.0, 0, 92.0, 140.0, [[140.0, 92.0]]), "block": 0.5},
        {**_run("full", 1.0, 1, 93.0, 120.0, [[120.0, 93.0]]), "block": 0.3},
        _run("ucb", 0.5, 0, 92.5, 60.0, [[60.0, 92.5]]),
    ]
    rows = {row["strategy"]: row for row in bench_report.summarize(runs)}
    assert rows["full"]["seeds"] == 2 and rows["full"]["runs"] == 3
    assert rows["full"]["acc_mean"] == pytest.approx(92.5)  # not (92 + 92 + 93) / 3
    assert rows["full"]["wall_s_mean"] == pytest.approx(120.0)
    assert rows["ucb"]["speedup"] == pytest.approx(2.0)


def test_speed_ups_are_of_median_times_and_a_busy_machine_is_said(capsys):
    """A user's tiny bench on a shared 2-core machine: one full-data run took 25.1 s, the others
    2.4 and 2.8; the mean made eps-greedy "8.72x faster" (seed-matched: ~2.2x), and nothing said so."""
    runs = [_run("full", 1.0, seed, 60.0, wall, [[wall, 60.0]]) for seed, wall in enumerate((25.1, 2.4, 2.8))]
    runs += [_run("epsilon_greedy", 0.5, seed, 58.0, wall, [[wall, 58.0]]) for seed, wall in enumerate((1.1, 1.2, 1.3))]
    rows = {row["strategy"]: row for row in bench_report.summarize(runs)}
    assert rows["epsilon_greedy"]["speedup"] == pytest.approx(2.8 / 1.2)
    assert rows["full"]["wall_s_median"] == pytest.approx(2.8) and rows["full"]["wall_s_mean"] == pytest.approx(10.1)
    note = bench_report.timing_spread_note(runs)
    assert note.startswith("note: the runs of one cell took up to 10.5x each other's time (full at keep 1.0: "
                           "2.4-25.1 s): the machine was busy")
    assert bench_report.timing_spread_note(runs[3:]) == ""  # 1.1-1.3 s: alike


def test_one_seed_runs_timed_unalike_per_sample_are_said():
    """A one-seed bench on a busy 2-core machine: full 13.5 s for 12k samples, eps-greedy 1.4 s and
    UCB 10.9 s for 6k each; the verdict said "eps-greedy 9.97x faster" and no note came, since each
    cell ran once. Seconds per trained sample differ 8x between the runs: that is said."""
    runs = [{**_run("full", 1.0, 0, 26.8, 13.5, [[13.5, 26.8]]), "samples_seen": 12000},
            {**_run("epsilon_greedy", 0.5, 0, 12.2, 1.4, [[1.4, 12.2]]), "samples_seen": 6000},
            {**_run("ucb", 0.5, 0, 14.2, 10.9, [[10.9, 14.2]]), "samples_seen": 6000}]
    note = bench_report.timing_spread_note(runs)
    assert note.startswith("note: the runs spent up to 7.8x each other's time per trained sample "
                           "(epsilon_greedy at keep 0.5: 0.23 ms, ucb at keep 0.5: 1.82 ms): the machine was busy")
    # alike per sample (1.13 vs 1.17 ms, and 1.5x as the strategies' own costs can make): no note
    runs[1]["wall_s"], runs[2]["wall_s"] = 7.0, 10.0
    assert bench_report.timing_spread_note(runs) == ""
    # results recorded without samples_seen are judged by the cells alone
    assert bench_report.timing_spread_note([{k: v for k, v in run.items() if k != "samples_seen"}
                                            for run in runs]) == ""


def test_bench_says_its_plan_before_the_first_run_and_no_repository_note_on_own_data():
    mode = {"seeds": (0, 1, 2), "keeps": (0.3, 0.5, 0.7), "epochs": 10, "train_limit": None,
            "strategies": ("uniform_random", "epsilon_greedy", "ucb", "infobatch", "el2n", "forgetting")}
    assert bench_report.plan_line(mode) == (
        "plan: 63 runs of 10 epochs: uniform_random, epsilon_greedy, ucb, infobatch, el2n, forgetting at keep "
        "0.3, 0.5, 0.7, 3 seeds, full data once per keep and seed (--strategies, --keeps, --seeds, --epochs "
        "choose fewer)")
    assert bench_report.scale_note(mode, recipe.RECIPE, False, own_data=True) == \
        "all training images, 10 epochs, SmallResNet(32, 64, 128), 3 seeds"


def test_tiny_benchmark_writes_every_output_and_continues(fashion_mnist_dir, tmp_path, capsys):
    out = tmp_path / "e2e.json"
    common = ["--train-limit", "2000", "--epochs", "2", "--strategies", "uniform_random", "el2n",
              "--keeps", "0.5", "--workdir", str(tmp_path / "stores"), "--out", str(out),
              "--threads", str(torch.get_num_threads()), "--amp", "off", "--no-flush-denormal"]
    assert cli.main([*common, "--seeds", "0"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "2k images, 2 epochs, SmallResNet(32, 64, 128), 1 seed; every measurement: docs/benchmarks.md in the source repository"
    assert f"plots: {tmp_path / 'e2e'}_curves.png, {tmp_path / 'e2e'}_frontier.png" in printed
    # --train-limit makes the built-in data as small as a user's: the few-steps warning is said too
    assert ("warning: at keep 0.5 an epoch trains 1000 of 2000 samples in 2 optimizer steps of batch 512; "
            "pass --batch-size 100 or less for at least 10 steps per epoch (and a --lr that suits it)") in printed
    assert printed[-1].startswith("verdict at keep 0.5: uniform ") and "el2n" not in printed[-1]
    result = json.loads(out.read_text())
    assert [(r["strategy"], r["seed"], r["block"]) for r in result["runs"]] == [
        ("full", 0, 0.5), ("uniform_random", 0, 0.5), ("el2n", 0, 0.5)]
    full, uniform, el2n = result["runs"]
    assert full["samples_seen"] == 2 * 2000 and uniform["samples_seen"] == 2 * 1000
    assert el2n["scoring_s"] > 0  # the static method's scoring epoch is billed to it
    assert all(len(r["curve"]) == 2 and 0 <= r["final_acc"] <= 100 for r in result["runs"])
    assert {"cpu", "cores"} <= set(result["machine"])
    report = out.with_suffix(".md").read_text()
    assert "| keep | uniform_random | el2n |" in report and "| full | 1.0 |" in report
    assert "3 runs, " in report and " h of training + evaluation in all." in report
    assert "Partial" not in report  # all 3 planned runs are done; a file stopped early says so:
    assert "**Partial: 2 of 3 planned runs**" in bench_report.render({**result, "runs": result["runs"][:2]})
    unplanned = {**result["runs"][2], "strategy": "ucb"}  # a row this plan does not count
    assert "**Partial: 2 of 3 planned runs**" in bench_report.render(
        {**result, "runs": [*result["runs"][:2], unplanned]})
    for suffix in ("_curves.png", "_frontier.png"):
        assert (tmp_path / f"e2e{suffix}").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # --continue keeps seed 0's runs untouched and adds only seed 1's
    assert cli.main([*common, "--seeds", "0", "1", "--continue"]) == 0
    continued = json.loads(out.read_text())
    assert continued["runs"][:3] == result["runs"]
    assert [(r["strategy"], r["seed"]) for r in continued["runs"][3:]] == [
        ("full", 1), ("uniform_random", 1), ("el2n", 1)]
    assert {row["seeds"] for row in continued["summary"]} == {2}
    capsys.readouterr()
    assert cli.main([*common, "--seeds", "0", "--continue"]) == 0  # a narrower --continue: nothing to run
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("2k images, 2 epochs, SmallResNet(32, 64, 128), 1 seed;")  # what this call runs
    assert ", 2 seeds; every measurement" in printed[-1]  # what the verdict's means average: the file's runs

    # --continue onto a file from another machine or with other settings is refused, file untouched
    for args in (["--epochs", "3"], ["--amp", "bf16"]):
        with pytest.raises(ConfigError, match="--continue: .*(mode.epochs|settings)"):
            cli.main([*common, *args, "--seeds", "0", "1", "--continue"])
    foreign = {**continued, "machine": {**continued["machine"], "cpu": "Some Other CPU"}}
    out.write_text(json.dumps(foreign))
    with pytest.raises(ConfigError, match="machine.cpu = 'Some Other CPU'"):
        cli.main([*common, "--seeds", "0", "1", "--continue"])
    assert json.loads(out.read_text()) == foreign
    # ... and onto one from a CPU of the same name without AMX (half as fast in bf16) ...
    other_features = {**continued, "machine": {**continued["machine"], "cpu_features": ["avx2", "amx_bf16"]}}
    out.write_text(json.dumps(other_features))
    with pytest.raises(ConfigError, match="machine.cpu_features"):
        cli.main([*common, "--seeds", "0", "1", "--continue"])
    # ... and onto one from a CPU of the same name and features but another family/model ...
    other_id = {**continued, "machine": {**continued["machine"], "cpu_id": "OtherVendor family 99 model 99"}}
    out.write_text(json.dumps(other_id))
    with pytest.raises(ConfigError, match="machine.cpu_id"):
        cli.main([*common, "--seeds", "0", "1", "--continue"])
    # ... and onto one written before the CPU's id or features were recorded: it cannot show its CPU
    for field in ("cpu_id", "cpu_features"):
        older = {**continued, "machine": {k: v for k, v in continued["machine"].items() if k != field}}
        out.write_text(json.dumps(older))
        with pytest.raises(ConfigError, match=f"does not record machine.{field}"):
            cli.main([*common, "--seeds", "0", "1", "--continue"])
        assert json.loads(out.read_text()) == older
    # ... and onto one measured before even batches were part of the recipe
    old_recipe = {k: v for k, v in continued["recipe"].items() if k != "even_batches"}
    out.write_text(json.dumps({**continued, "recipe": old_recipe}))
    with pytest.raises(ConfigError, match="--continue: .*recipe"):
        cli.main([*common, "--seeds", "0", "1", "--continue"])


def test_bf16_is_the_default_with_amx_or_amd_avx512_bf16():
    # measured: avx512_bf16 without AMX trains this model 1.4x slower in bf16 than fp32 on a Xeon,
    # 1.4x faster on a Zen 5 EPYC
    amx = {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}
    assert machine.cpu_has_fast_bf16(amx, "GenuineIntel")
    assert not machine.cpu_has_fast_bf16({"avx2", "avx512f", "avx512_bf16"}, "GenuineIntel")
    assert machine.cpu_has_fast_bf16({"avx2", "avx512f", "avx512_bf16"}, "AuthenticAMD")
    assert not machine.cpu_has_fast_bf16({"avx2"}, "AuthenticAMD")
    assert not machine.cpu_has_fast_bf16(set(), None)


def test_cpu_id_is_vendor_family_and_model_number(tmp_path):
    # "model" must not be read off the "model name" line ("model AMD EPYC" names no CPU kind)
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\n"
                       "model name\t: AMD EPYC\nmodel\t\t: 2\nflags\t\t: fpu avx2\n")
    assert machine.cpu_id(cpuinfo) == "AuthenticAMD family 26 model 2"
    assert machine.cpu_id(tmp_path / "absent") is None
    cpuinfo.write_text("vendor_id\t: AuthenticAMD\ncpu family\t: 26\n")  # no model line
    assert machine.cpu_id(cpuinfo) is None


def test_the_built_in_stores_are_converted_again_when_the_cached_file_is_not_theirs(fashion_mnist_dir, tmp_path,
                                                                                      monkeypatch):
    """The workdir's stores were trusted by their names: a 300-image store copied over the test
    split was benchmarked (and recorded) as Fashion-MNIST's, and a damaged one failed each run."""
    from fastprune import Store

    train, test = bench_run.prepare_stores(tmp_path, 500)
    converted = test.stat().st_mtime_ns
    assert bench_run.prepare_stores(tmp_path, 500) == (train, test) and test.stat().st_mtime_ns == converted
    test.write_bytes(train.read_bytes())  # another store under the test split's name
    bench_run.prepare_stores(tmp_path, 500)
    with Store(test) as store:
        assert store.num_samples == 10_000
    damaged = bytearray(test.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF  # one pixel byte: only the checksums tell
    test.write_bytes(bytes(damaged))
    bench_run.prepare_stores(tmp_path, 500)
    assert verify_file(test).ok
    # without the dataset (uninstalled since), sound cached stores are used; a damaged one is refused
    monkeypatch.setattr("fastprune.convert.FASHION_MNIST_DIR", tmp_path / "no-dataset")
    assert bench_run.prepare_stores(tmp_path, 500) == (train, test)
    test.write_bytes(bytes(damaged))
    with pytest.raises(ConversionError, match="no-dataset"):
        bench_run.prepare_stores(tmp_path, 500)


def test_the_workdir_is_the_users_cache_and_a_bad_one_is_named(tmp_path, monkeypatch):
    """The default was /tmp/fastprune-bench, which the first user to run bench owned; a --workdir
    that is a file gave "[Errno 17] File exists"."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert cli.default_workdir() == tmp_path / "cache" / "fastprune" / "bench"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cli.default_workdir() == tmp_path / "home" / ".cache" / "fastprune" / "bench"
    a_file = tmp_path / "stores.beton"
    a_file.write_bytes(b"")
    with pytest.raises(ConfigError, match=f"^--workdir {a_file} is a file, not a folder$"):
        cli.main(["--quick", "--workdir", str(a_file), "--out", str(tmp_path / "r.json")])
    assert not (tmp_path / "r.json").exists()


def test_the_recorded_command_runs_as_typed(monkeypatch):
    """``python -m fastprune bench`` was recorded as ``python .../fastprune/__main__.py bench``,
    which fails to run (its relative imports need the package)."""
    python = Path(sys.executable).name
    cases = {("/x/src/fastprune/__main__.py", "bench", "--out", "a b.json"): f"{python} -m fastprune bench --out 'a b.json'",
             (".venv/bin/fastprune", "bench"): ".venv/bin/fastprune bench",
             ("/x/src/fastprune/main_job.py", "--bench", "--quick"): f"{python} -m fastprune.main_job --bench --quick",
             ("benchmarks/gpu.py", "--quick"): f"{python} benchmarks/gpu.py --quick"}
    for argv, recorded in cases.items():
        monkeypatch.setattr(sys, "argv", list(argv))
        assert machine.command_line() == recorded


def test_remaining_time_extrapolates_seconds_per_unit_of_work():
    # 300 s for a full run (1.0) and a keep-0.5 run: 200 s per unit; 0.5 + 1.0 units left -> 5 min
    assert cli.remaining_time(300.0, 1.5, 1.5) == "~5 min left"
    assert cli.remaining_time(300.0, 1.5, 0.0) == "done"


def test_heldout_study_splits_train_disjointly_parses_variants_and_measures_gaps(study_script):
    study = study_script("heldout_tuning")
    fit, held = study.split_indices(60_000)
    assert len(held) == study.HELDOUT and len(fit) == 50_000
    assert np.array_equal(np.union1d(fit, held), np.arange(60_000)) and not np.intersect1d(fit, held).size
    assert np.array_equal(study.split_indices(60_000)[1], held)  # the same split every time

    assert study.parse_variant("ucb") == ("ucb", {})
    assert study.parse_variant("ucb:c=0.5,bonus=var") == ("ucb", {"c": 0.5, "bonus": "var"})
    with pytest.raises(SystemExit, match="option=value"):
        study.parse_variant("ucb:c")
    labels = np.arange(10)
    assert study.strategy_options({"balanced": 1.0, "eps": 0.1}, labels) == {"labels": labels, "eps": 0.1}
    assert study.strategy_options({"balanced": 0.0}, labels) == {}
    # a variant's own epochs= (parsed as a float) leaves the strategy options; others get --epochs
    assert study.run_settings({"epochs": 5.0, "eps": 0.1}, labels, 10) == (5, 0.5, {"eps": 0.1})
    assert study.run_settings({"balanced": 1.0}, labels, 10, 0.3) == (10, 0.3, {"labels": labels})
    assert study.run_settings({"keep": 0.24, "final_full_epochs": 1.0}, labels, 10, 0.3) == (
        10, 0.24, {"final_full_epochs": 1.0})
    for bad in (0.0, 1.5, "half"):
        with pytest.raises(SystemExit, match="keep="):
            study.run_settings({"keep": bad}, labels, 10)
    for bad in (0.0, 2.5, float("nan"), "five"):
        with pytest.raises(SystemExit, match="positive whole number"):
            study.run_settings({"epochs": bad}, labels, 10)

    runs = [{"variant": "full", "seed": 0, "final_acc": 93.0, "wall_s": 10.0},
            {"variant": "ucb", "seed": 0, "final_acc": 92.0, "wall_s": 5.0},
            {"variant": "full", "seed": 1, "final_acc": 92.0, "wall_s": 12.0},
            {"variant": "ucb", "seed": 1, "final_acc": 91.5, "wall_s": 7.0}]
    full, ucb = study.summarize(runs)
    assert (full["variant"], full["gap_pt"], full["wall_s"]) == ("full", 0.0, 11.0)
    assert ucb["acc_mean"] == pytest.approx(91.75) and ucb["gap_pt"] == pytest.approx(-0.75)
    assert ucb["seeds"] == [0, 1] and "| ucb | 2 | 91.75 ± 0.35 | -0.75 | 6.0 | 1.83x |" in study.markdown([full, ucb])
    assert "| variant | seeds | test acc % (mean ± std) |" in study.markdown([full, ucb], "test")
    one_seed = study.summarize(runs[:2])  # a second file's single seed: no spread (it crashed the table)
    assert "| ucb | 1 | 92.00 | -1.00 | 5.0 | 2.00x |" in study.markdown(one_seed)


def test_heldout_study_reuses_full_runs_only_from_a_file_of_the_same_recipe(study_script, tmp_path):
    study = study_script("heldout_tuning")
    this = {"recipe": {"lr": 1.2}, "model": {"widths": (32,)}, "epochs": 10, "split": {"fit": 50000},
            "machine": {"cpu": "AMD EPYC", "cpu_id": "family 23 model 49", "cpu_features": ["avx2"], "cores": 2,
                        "torch": "2.14.1"}, "device": {"device": "cpu", "precision": "fp32"}}
    earlier = {**this, "model": {"widths": [32]}, "runs": [{"variant": "full", "seed": 0, "final_acc": 93.0},
                                {"variant": "ucb", "seed": 0, "final_acc": 92.0},
                                {"variant": "full", "seed": 1, "final_acc": 92.5}]}
    path = tmp_path / "earlier.json"
    path.write_text(json.dumps(earlier))
    reused = study.full_runs_from(path, this, [1, 0])
    assert {seed: run["final_acc"] for seed, run in reused.items()} == {1: 92.5, 0: 93.0}
    assert reused[0]["from"] == str(path)
    with pytest.raises(SystemExit, match="no full-data run for seeds \\[2\\]"):
        study.full_runs_from(path, this, [0, 2])
    with pytest.raises(SystemExit, match="its epochs 10 differs from this run's 5"):
        study.full_runs_from(path, {**this, "epochs": 5}, [0])
    # full-data runs of another CPU or precision: their wall-clocks would make false speed-ups
    with pytest.raises(SystemExit, match="its machine.cpu_id 'family 23 model 49' differs"):
        study.full_runs_from(path, {**this, "machine": {**this["machine"], "cpu_id": "family 6 model 143"}}, [0])
    with pytest.raises(SystemExit, match="its device .*'fp32'.* differs from this run's .*'bf16'"):
        study.full_runs_from(path, {**this, "device": {"device": "cpu", "precision": "bf16"}}, [0])
    # the committed files predate the device and (some) cpu_id records: still reusable on the CPU
    this_cpu = {**this, "device": {"device": "cpu", "precision": "off"}}
    legacy = {**earlier, "machine": {k: v for k, v in this["machine"].items() if k != "cpu_id"}}
    del legacy["device"]
    path.write_text(json.dumps(legacy))
    assert sorted(study.full_runs_from(path, this_cpu, [0, 1])) == [0, 1]
    with pytest.raises(SystemExit, match="predate device records and ran on the CPU; this run trains on cuda:0"):
        study.full_runs_from(path, {**this, "device": {"device": "cuda:0", "precision": "bf16"}}, [0])
    with pytest.raises(SystemExit, match="drop --fit-limit"):
        study.main(["--final-test", "--fit-limit", "300", "--workdir", str(tmp_path)])


def test_heldout_study_fit_limit_keeps_the_first_fit_images_and_the_same_held_out_split(
        study_script, fashion_mnist_dir, tmp_path):
    from fastprune.convert.idx import find_idx_files, load_idx
    from fastprune.store.reader import Store

    study = study_script("heldout_tuning")
    _, labels = load_idx(*find_idx_files(fashion_mnist_dir, "train"))
    fit, held = study.split_indices(len(labels))
    fit_store, held_store, fit_labels = study.split_stores(tmp_path, fit_limit=300)
    assert np.array_equal(fit_labels, labels[fit[:300]])
    with Store(fit_store) as small, Store(held_store) as held_out:
        assert len(small) == 300 and len(held_out) == study.HELDOUT
        assert [int(held_out[i][1]) for i in range(5)] == list(labels[held[:5]])
        assert [int(small[i][1]) for i in (0, 299)] == [labels[fit[0]], labels[fit[299]]]
    assert "-300-" in fit_store.name  # not the store of the whole fit part


def test_study_reports_name_the_command_date_and_cpu(study_script, tmp_path, capsys):
    study = study_script("heldout_tuning")
    result = {"command": "python x.py --seeds 0", "date": "2026-11-23T12:00:00", "machine": {"cpu": "Some CPU"}}
    study.write_markdown(tmp_path / "r.json", "A title", result, "| a |")
    assert (tmp_path / "r.md").read_text() == \
        "# A title\n\n`python x.py --seeds 0` — 2026-11-23T12:00:00, Some CPU.\n\n| a |\n"
    assert f"wrote {tmp_path / 'r.json'} (+ .md)" in capsys.readouterr().out


def test_even_batches_study_picks_a_keep_with_the_tiny_remainder_and_both_batchings(study_script, tmp_path):
    from fastprune.convert import from_arrays
    from fastprune.store.reader import Store
    from fastprune.train import make_loaders, make_strategy

    study = study_script("even_batches")
    for n in (50_000, 60_000, 12_345):
        keep = study.keep_with_remainder(n, 512, study.REMAINDER)
        assert round(keep * n) % 512 == study.REMAINDER and 0.6 < keep <= 0.7
    # make_loaders batches evenly unless told not to; the study compares the two
    images = np.zeros((100, 8, 8, 3), np.uint8)
    store = Store(from_arrays(images, np.arange(100) % 10, tmp_path / "s.beton", progress=False))
    sizes = {}
    for even in (False, True):
        sampler = make_strategy("uniform_random", 100, 0.7, epochs=1, seed=0)
        loader, _ = make_loaders(store, store, 32, sampler=sampler, even_batches=even, mean=(0,) * 3, std=(1,) * 3)
        sizes[even] = [len(b.indices) for b in loader]
    assert sizes == {False: [32, 32, 6], True: [23, 23, 24]}
    runs = [{"batches": b, "seed": s, "final_acc": a, "curve": [[1.0, 50.0], [2.0, a]]}
            for b, s, a in (("plain", 0, 91.0), ("even", 0, 92.0), ("plain", 1, 91.5), ("even", 1, 92.5))]
    table = study.markdown(runs)
    assert "| plain | mean | | 91.25 |" in table and "| even | mean | | 92.25 |" in table


@pytest.mark.skipif(torch.cuda.device_count() > 7, reason="a machine with a cuda:7")
@pytest.mark.parametrize("name", ["even_batches", "heldout_tuning"])
def test_studies_take_a_device_and_refuse_a_missing_gpu_in_one_line(study_script, tmp_path, name):
    """Each study trains where --device says (auto: CUDA when available) and records it; a GPU
    that is not there ends it before any data is prepared, naming the study."""
    study = study_script(name)
    with pytest.raises(SystemExit, match=f"^{name}: .*cuda:7"):
        study.main(["--device", "cuda:7", "--workdir", str(tmp_path / "never")])
    assert not (tmp_path / "never").exists()


def test_eval_every_thins_the_curves_not_the_final_accuracy_or_wall_clock(fashion_mnist_dir, tmp_path, capsys):
    out = tmp_path / "sparse.json"
    assert cli.main(["--train-limit", "1000", "--epochs", "3", "--eval-every", "2", "--strategies",
                     "uniform_random", "--keeps", "0.5", "--seeds", "0", "--workdir", str(tmp_path / "stores"),
                     "--out", str(out), "--threads", "1", "--amp", "off"]) == 0
    result = json.loads(out.read_text())
    assert result["mode"]["eval_every"] == 2 and "eval_every" not in result["settings"]
    for run in result["runs"]:  # evaluated after epochs 2 (every 2nd) and 3 (the last)
        assert [record["val_acc"] is not None for record in run["history"]] == [False, True, True]
        assert [point[0] for point in run["curve"]] == [round(r["cumulative_train_s"], 3) for r in run["history"][1:]]
        assert run["final_acc"] == run["history"][-1]["val_acc"] == run["curve"][-1][1]
        assert run["eval_s"] == sum(r["eval_s"] for r in run["history"][1:]) > 0
    import csv

    rows = list(csv.DictReader((tmp_path / "sparse_epochs.csv").open()))
    evaluated = [k for k in rows[0] if k == "val_acc" or k.startswith("val_class_acc.")]
    assert len(evaluated) == 11  # overall + one per Fashion-MNIST class
    # an epoch not evaluated leaves its evaluation cells empty; an evaluated one fills them
    assert all(rows[0][k] == "" for k in evaluated) and all(rows[1][k] != "" for k in evaluated)
    capsys.readouterr()
    with pytest.raises(SystemExit):  # refused as the command line is read, naming the argument
        cli.main(["--eval-every", "0", "--out", str(out)])
    assert "--eval-every" in capsys.readouterr().err


def test_quick_mode_is_the_full_mode_narrowed_with_a_half_width_model_not_a_second_recipe():
    def mode_and_recipe(*argv):
        args = cli.build_parser().parse_args(list(argv))
        mode = plan.mode_for(args)
        return mode, cli.recipe_for(args, mode)

    quick, trained = mode_and_recipe("--quick")
    # the full benchmark's data, epochs and evaluation, narrowed to keep 0.5 and one seed
    full, full_recipe = mode_and_recipe()
    assert {key: quick[key] for key in ("train_limit", "epochs", "eval_every")} == \
        {key: full[key] for key in ("train_limit", "epochs", "eval_every")}
    assert quick["keeps"] == (0.5,) and len(quick["seeds"]) == 1
    assert {"epsilon_greedy", "ucb"} <= set(quick["strategies"]) and "full" not in quick["strategies"]
    assert trained == recipe.QUICK_RECIPE and trained.epochs == quick["epochs"]
    # the preset changes the widths and nothing else the recipe states
    assert recipe.QUICK_RECIPE.model.widths < recipe.RECIPE.model.widths
    assert recipe.QUICK_RECIPE.replace(widths=recipe.RECIPE.model.widths) == recipe.RECIPE
    # --epochs and --width apply to the preset; the full mode keeps the benchmark's recipe
    assert mode_and_recipe("--quick", "--epochs", "3")[1] == recipe.QUICK_RECIPE.replace(epochs=3)
    assert mode_and_recipe("--quick", "--width", "32")[1].model.widths == recipe.RECIPE.model.widths
    assert full_recipe == recipe.RECIPE and full["train_limit"] is None and len(full["seeds"]) == 3
    # a result file records the model its runs trained
    result = plan.new_result(quick, bench_run.Settings(amp="off", threads=1), True, recipe.QUICK_RECIPE)
    assert result["model"]["widths"] == recipe.QUICK_RECIPE.model.widths and result["mode"]["quick"]


def test_scale_note_says_a_run_is_quick_and_what_the_full_benchmark_is():
    quick = {"train_limit": None, "epochs": 10, "seeds": (0,)}
    note = bench_report.scale_note(quick, recipe.RECIPE.replace(widths=(16, 32, 64)), True)
    assert note.startswith("quick run: all training images, 10 epochs, SmallResNet(16, 32, 64), 1 seed; ")
    assert note.endswith("the full benchmark (all training images, 10 epochs, SmallResNet(32, 64, 128), 3 seeds): "
                         "docs/benchmarks.md in the source repository")
    subset = bench_report.scale_note({"train_limit": 12000, "epochs": 30, "seeds": (0, 1)}, recipe.RECIPE, True)
    assert subset.startswith("quick run: 12k images, 30 epochs, SmallResNet(32, 64, 128), 2 seeds; ")
    full = bench_report.scale_note({"train_limit": None, "epochs": 10, "seeds": (0, 1, 2)}, recipe.RECIPE, False)
    assert full == "all training images, 10 epochs, SmallResNet(32, 64, 128), 3 seeds; every measurement: " \
                   "docs/benchmarks.md in the source repository"
    other = bench_report.scale_note({"train_limit": 1500, "epochs": 2, "seeds": (0,)},
                                    recipe.RECIPE.replace(name="resnet18"), False)
    assert other.startswith("1,500 images, 2 epochs, resnet18, 1 seed; ")


def test_verdict_is_one_line_on_the_bandits_and_uniform_at_keep_one_half():
    def row(strategy, keep, acc, speedup):
        return {"strategy": strategy, "keep": keep, "acc_mean": acc, "speedup": speedup,
                "acc_delta_pt": acc - 90.0}
    summary = [row("full", 1.0, 90.0, 1.0), row("uniform_random", 0.3, 88.0, 3.2),
               row("uniform_random", 0.5, 89.0, 1.98), row("epsilon_greedy", 0.5, 89.75, 1.95),
               row("ucb", 0.5, 90.125, 2.0), row("el2n", 0.5, 89.5, 1.7)]
    assert bench_report.verdict(summary, "a note") == (
        "verdict at keep 0.5: uniform 1.98x faster, -1.00 pt; eps-greedy 1.95x faster, -0.25 pt; "
        "UCB 2.00x faster, +0.12 pt vs full data (90.00%) (a note)")
    # no keep 0.5 run: the nearest keep; none of the three strategies: every one run there
    assert bench_report.verdict([row("full", 1.0, 90.0, 1.0), row("el2n", 0.3, 88.5, 2.25)], "n") == \
        "verdict at keep 0.3: el2n 2.25x faster, -1.50 pt vs full data (90.00%) (n)"
    assert bench_report.verdict([row("full", 1.0, 90.0, 1.0)], "n").startswith("verdict: no full-data and pruned")
    # slower than full data is not "0.82x faster" (a train audit)
    assert bench_report.verdict([row("full", 1.0, 90.0, 1.0), row("ucb", 0.5, 68.0, 0.82)], "n") == \
        "verdict at keep 0.5: UCB 0.82x the speed (slower), -22.00 pt vs full data (90.00%) (n)"


def test_run_one_trains_the_model_override_of_a_held_out_study(monkeypatch, tmp_path):
    from fastprune.convert import from_arrays

    built = []
    real_build = recipe.build_model
    monkeypatch.setattr(recipe, "build_model", lambda name, **kw: built.append((name, kw)) or real_build(name, **kw))
    rng = np.random.default_rng(0)
    store = from_arrays(rng.integers(0, 255, (64, 28, 28), np.uint8), np.arange(64) % 10, tmp_path / "s.beton",
                        progress=False)
    options = bench_run.Settings(threads=1, amp="off")
    one_epoch = recipe.RECIPE.replace(epochs=1)
    row = bench_run.run_one("uniform_random", 0.5, 0, (store, store), options, recipe=one_epoch.replace(widths=(8, 16)))
    assert built == [("small_resnet", {"in_channels": 3, "num_classes": 10, "widths": (8, 16), "blocks": 1,
                                       "stem_stride": 2})]  # 10 classes: read off the store's labels
    assert row["epochs"] == 1 and row["samples_seen"] == 32
    bench_run.run_one("uniform_random", 0.5, 0, (store, store), options, recipe=one_epoch)  # no override: the benchmark's
    assert built[1] == ("small_resnet", {"in_channels": 3, "num_classes": 10, **{k: v for k, v in recipe.RECIPE.model_json().items()
                                                               if k != "name"}})


def test_a_keep_one_cell_is_said_to_keep_every_sample_and_a_batch_of_one_is_advised_as_such():
    """A train audit: ucb at keep 1.0 was said to be covered by 'its warm-up or scoring epochs', and
    a store of 15 samples was advised '--batch-size 1 or less'."""
    from fastprune.train.recipe import RECIPE, few_steps_warning

    runs = [{"strategy": "full", "keep": 1.0, "samples_seen": 100}, {"strategy": "ucb", "keep": 1.0, "samples_seen": 100}]
    assert bench_report.never_pruned_note(runs) == ("note: ucb at keep 1.0 trained on every sample in every epoch "
                                                    "(keep 1 keeps every sample): that row is full-data training, "
                                                    "not pruning")
    assert "pass --batch-size 1 for at least 10 steps" in few_steps_warning(RECIPE.replace(batch_size=8), 15, 1.0)
