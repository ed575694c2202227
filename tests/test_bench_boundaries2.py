"""What the benchmark plans and reports, where no other test pinned it down (mutation audit,
round 3, of bench/plan.py, report.py, machine.py): which runs --continue still owes, the verdict's
keep and rows, the shares and the spread note's threshold, the device's precision and CPU rule."""
from __future__ import annotations

import pytest

from fastprune.bench import machine, plan
from fastprune.bench import report as bench_report

from test_bench import _run


def _row(run):
    strategy, keep, seed, block = run
    return {**_run(strategy, keep, seed, 90.0, 10.0, [[10.0, 90.0]]), "block": block}


def test_a_finished_benchmark_owes_no_runs_and_a_partial_one_owes_exactly_the_rest():
    """--continue keys the baseline runs by their keep block (full data runs at keep 1.0 in every
    block): keyed by keep alone, every baseline looked missing and was trained again."""
    mode = {"seeds": (0, 1), "keeps": (0.3, 0.5), "strategies": ("ucb", "el2n")}
    planned = plan.planned_runs(mode)
    assert plan.missing_runs(mode, [_row(run) for run in planned]) == []
    assert plan.missing_runs(mode, [_row(run) for run in planned[:4]]) == planned[4:]
    result = {"mode": mode, "runs": [_row(run) for run in planned]}
    assert bench_report.completeness(result) == ""


@pytest.mark.parametrize("keeps, said", [((0.3, 0.5, 0.7), 0.5), ((0.4, 0.9), 0.4)])
def test_the_verdict_speaks_of_keep_one_half_or_the_keep_nearest_it(keeps, said):
    """The closing line is about keep 0.5 (the README's headline) or the nearest keep run, whatever
    other keeps the benchmark ran: the largest keep (least pruning, least speed-up) was passed."""
    runs = [_run("full", 1.0, 0, 92.0, 100.0, [[100.0, 92.0]])]
    runs += [_run("ucb", keep, 0, 90.0 + keep, 100.0 * keep, [[100.0 * keep, 90.0 + keep]]) for keep in keeps]
    line = bench_report.verdict(bench_report.summarize(runs), "note")
    assert line.startswith(f"verdict at keep {said:.1f}: UCB {1 / said:.2f}x faster, {said - 2:+.2f} pt")



@pytest.mark.parametrize("slow_wall, noted", [(5.0, True), (3.8, False)])
def test_per_sample_spread_note_fires_past_twice_the_time_per_sample(slow_wall, noted):
    """PER_SAMPLE_WARNING = 2.0; the suite checks 7.8x (note) and 1.04x (none), so a threshold moved
    to 3x (a one-seed run 2.5x slower per sample, unsaid) passed it."""
    runs = [{**_run("full", 1.0, 0, 90.0, 4.0, [[4.0, 90.0]]), "samples_seen": 4000},
            {**_run("ucb", 0.5, 0, 90.0, slow_wall, [[slow_wall, 90.0]]), "samples_seen": 2000}]
    assert bench_report.timing_spread_note(runs).startswith("note: the runs spent up to") == noted


@pytest.mark.parametrize("fast_bf16, precision", [(True, "bf16"), (False, "off")])
def test_the_result_files_device_records_the_precision_the_runs_train_in(monkeypatch, fast_bf16, precision):
    """result["device"]["precision"] is what amp "auto" resolves to on this machine (bf16 on an AMX
    CPU, else off), the precision the runs trained in: recording the setting ("auto") says nothing."""
    from fastprune.bench import run as bench_run

    from test_device import _pretend_cuda

    _pretend_cuda(monkeypatch, False)
    monkeypatch.setattr(machine, "cpu_has_fast_bf16", lambda *a: fast_bf16)
    settings = bench_run.Settings(threads=1, device="cpu")
    assert settings.amp == "auto"
    assert machine.run_device(settings) == {"device": "cpu", "gpu": None, "torch": __import__("torch").__version__,
                                            "cuda": None, "precision": precision}


def test_a_result_one_run_short_is_said_to_be_partial():
    mode = {"seeds": (0,), "keeps": (0.5,), "strategies": ("ucb", "el2n")}
    planned = plan.planned_runs(mode)
    result = {"mode": mode, "runs": [_row(run) for run in planned[:-1]]}
    assert bench_report.completeness(result).startswith("**Partial: 2 of 3 planned runs**")

