"""Device everywhere a run trains (issue 35): --device/device= resolved in one helper, one precision
rule for train and bench, device fields and GPU busy % in result files, the benchmark's CUDA
warm-up. CPU tests of every rule (torch.cuda.is_available monkeypatched where CUDA is needed);
the CUDA-only checks at the end run where a GPU is."""

from __future__ import annotations

import itertools
import json
import random
import types

import numpy as np
import pytest
import torch

import fastprune

from fastprune import cli as fastprune_cli
from fastprune.bench import machine
from fastprune.bench import run as bench_run
from fastprune.errors import ConfigError
from fastprune.train import device as train_device
from fastprune.train import recipe as train_recipe

CUDA = torch.cuda.is_available()


def _pretend_cuda(monkeypatch, available: bool, count: int = 1) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count if available else 0)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


@pytest.fixture(scope="module")
def tiny_stores(tmp_path_factory):
    """(train: 96 random 12x12 images, val: 40), 4 classes: a run takes about a second."""
    from fastprune.convert import from_arrays

    folder, rng = tmp_path_factory.mktemp("device"), np.random.default_rng(0)

    def store(name, n):
        return from_arrays(rng.integers(0, 255, (n, 12, 12), np.uint8), np.arange(n) % 4, folder / f"{name}.beton",
                           progress=False, workers=1)

    return store("train", 96), store("val", 40)


# ------------------------------------------------------------------------------ resolving the device


def test_auto_is_cuda_when_available_else_cpu(monkeypatch):
    _pretend_cuda(monkeypatch, False)
    assert train_device.resolve_device("auto") == torch.device("cpu")
    assert train_device.resolve_device(None) == torch.device("cpu")
    _pretend_cuda(monkeypatch, True)
    assert train_device.resolve_device("auto") == torch.device("cuda", 0)
    assert train_device.resolve_device(" AUTO ") == torch.device("cuda", 0)
    assert train_device.resolve_device("cuda") == torch.device("cuda", 0)  # records compare equal
    assert train_device.resolve_device("cuda:0") == torch.device("cuda", 0)
    assert train_device.resolve_device("cpu") == torch.device("cpu")  # asked for: the CPU even so


def test_cuda_without_cuda_and_malformed_values_are_one_line_config_errors(monkeypatch):
    _pretend_cuda(monkeypatch, False)
    for value in ("cuda", "cuda:1", torch.device("cuda")):
        with pytest.raises(ConfigError, match="CUDA is not available on this machine") as caught:
            train_device.resolve_device(value)
        assert "\n" not in str(caught.value)
    for value in ("gpu", "cuda:x", "cuda:-1", "", "mps", "meta", "cuda:0:1"):
        with pytest.raises(ConfigError, match="device must be auto, cpu, cuda or cuda:N"):
            train_device.resolve_device(value)
    _pretend_cuda(monkeypatch, True, count=2)
    assert train_device.resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match=r"has 2 CUDA device\(s\) \(cuda:0..cuda:1\)"):
        train_device.resolve_device("cuda:2")


def test_run_recipe_and_settings_default_to_auto():
    import inspect

    assert inspect.signature(train_recipe.run_recipe).parameters["device"].default == "auto"
    assert bench_run.Settings().device == "auto"
    from fastprune.bench.comparison import compare

    assert inspect.signature(compare).parameters["device"].default == "auto"


def _one_line_error(capsys, code: int) -> str:
    captured = capsys.readouterr()
    assert code == 1
    assert "Traceback" not in captured.err and captured.err.count("\n") == 1, captured.err
    return captured.err


@pytest.mark.parametrize("command", ["train", "bench"])
def test_commands_refuse_cuda_without_cuda_and_bad_devices_in_one_line_before_any_work(
        command, monkeypatch, tmp_path, capsys):
    _pretend_cuda(monkeypatch, False)
    # the stores do not exist: the device is checked first, so the error is about the device
    stores = ["--train", str(tmp_path / "missing-train.beton"), "--val", str(tmp_path / "missing-val.beton")]
    err = _one_line_error(capsys, fastprune_cli.main([command, *stores, "--device", "cuda"]))
    assert err.startswith(f"fastprune {command}: error: device 'cuda': CUDA is not available")
    err = _one_line_error(capsys, fastprune_cli.main([command, *stores, "--device", "gpu0"]))
    assert "device must be auto, cpu, cuda or cuda:N, got 'gpu0'" in err
    assert not list(tmp_path.iterdir())


def test_main_job_refuses_cuda_without_cuda_before_converting(monkeypatch, tmp_path, capsys):
    from fastprune import main_job

    _pretend_cuda(monkeypatch, False)
    with pytest.raises(SystemExit) as exited:
        main_job.main(["--data-dir", str(tmp_path / "data"), "--device", "cuda"])
    err = _one_line_error(capsys, exited.value.code)
    assert "CUDA is not available" in err
    assert not (tmp_path / "data").exists()


def test_main_job_passes_its_device_to_bench_unless_the_bench_arguments_name_one(monkeypatch, tmp_path):
    from fastprune import main_job

    calls = []
    monkeypatch.setattr(main_job, "ensure_store", lambda split, out: out)
    monkeypatch.setattr(main_job.cli, "main", lambda argv: calls.append(argv) or 0)
    main_job.main(["--data-dir", str(tmp_path), "--device", "cpu"])
    main_job.main(["--data-dir", str(tmp_path), "--bench", "--quick", "--device=auto"])
    main_job.main(["--data-dir", str(tmp_path)])
    benches = [argv for argv in calls if argv[0] == "bench"]
    assert benches[0][-4:-1] == ["--device", "cpu", "--quick"]
    assert benches[1][-3:-1] == ["--quick", "--device=auto"] and benches[1].count("--device") == 0
    assert benches[2][-4:-1] == ["--device", "auto", "--quick"]  # the default: CUDA where there is one
    assert {argv[-1] for argv in benches} == {"--overwrite"}


def test_compare_and_the_study_refuse_cuda_without_cuda(monkeypatch, tiny_stores, study_script, capsys):
    from fastprune.bench import compare

    _pretend_cuda(monkeypatch, False)
    with pytest.raises(ConfigError, match="CUDA is not available"):
        compare(*tiny_stores, device="cuda", epochs=1)
    study = study_script("heldout_tuning")
    with pytest.raises(SystemExit, match="^heldout_tuning: device 'cuda:0': CUDA is not available"):
        study.main(["--device", "cuda:0"])


# ------------------------------------------------------------------------------ one precision rule


def test_one_precision_rule_bf16_on_a_gpu_and_on_cpus_where_it_is_fast(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(machine, "cpu_has_fast_bf16", lambda *a: True)
    assert train_device.run_amp(cpu, "auto") == "bf16"
    assert train_device.run_amp(cpu, "off") == "off"  # an explicit choice stands
    monkeypatch.setattr(machine, "cpu_has_fast_bf16", lambda *a: False)
    assert train_device.run_amp(cpu, "auto") == "off"
    assert train_device.run_amp(cpu, "bf16") == "bf16"
    # bf16 where the GPU has it natively (compute capability 8.0+: A100, H100, RTX 30xx); fp16 on a
    # T4 or V100, where torch's is_bf16_supported() says yes (emulated) and it is slow; and the
    # device trained on decides, not the current one
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    capabilities = {0: (7, 5), 1: (9, 0)}
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capabilities[torch.device(device).index])
    assert train_device.run_amp(torch.device("cuda:1"), "auto") == "bf16"
    assert train_device.run_amp(torch.device("cuda:0"), "auto") == "fp16"
    with pytest.raises(ValueError, match="amp must be"):
        train_device.run_amp(cpu, "fp8")


@pytest.mark.parametrize("fast_bf16", [True, False])
def test_train_and_bench_pick_the_same_precision_for_the_same_recipe(monkeypatch, tmp_path, tiny_stores, fast_bf16):
    """Issue 34 point 3: `train` ran fp32 on a CPU where `bench` picked bf16. Both now hand fit the
    precision run_amp picks."""
    from fastprune.bench import cli as bench_cli

    monkeypatch.setattr(machine, "cpu_has_fast_bf16", lambda *a: fast_bf16)
    seen = []

    def fake_fit(model, *args, amp, **kwargs):
        seen.append(train_device.autocast_dtype(train_device.model_device(model), amp))
        raise KeyboardInterrupt  # stop here: only the precision is wanted

    monkeypatch.setattr(train_recipe, "fit", fake_fit)
    train, val = (str(path) for path in tiny_stores)
    common = ["--train", train, "--val", val, "--device", "cpu", "--epochs", "1", "--width", "8", "--threads", "1"]
    assert fastprune_cli.main(["train", *common, "--no-progress"]) == 130
    assert fastprune_cli.main(["bench", *common, "--strategies", "ucb", "--keeps", "0.5", "--seeds", "0",
                               "--out", str(tmp_path / "b.json")]) == 130
    expected = torch.bfloat16 if fast_bf16 else None
    assert seen == [expected, expected]
    assert bench_cli.build_parser().parse_args([]).amp == "auto"


def test_settings_record_the_device_off_the_cpu_and_auto_amp_as_files_before_the_rule_did(monkeypatch):
    _pretend_cuda(monkeypatch, False)
    monkeypatch.setattr(machine, "cpu_has_fast_bf16", lambda *a: True)
    cpu = bench_run.Settings(threads=1).resolved()
    assert cpu.device == "cpu"
    assert cpu.record() == {"amp": "bf16", "channels_last": True, "threads": 1, "flush_denormal": True}
    monkeypatch.setattr(machine, "cpu_has_fast_bf16", lambda *a: False)
    assert cpu.record()["amp"] == "auto" and "device" not in cpu.record()
    _pretend_cuda(monkeypatch, True)
    gpu = bench_run.Settings(threads=1, device="auto").resolved()
    assert gpu.device == "cuda:0" and gpu.record()["device"] == "cuda:0" and gpu.record()["amp"] == "auto"


class _Captured(Exception):
    pass


def test_bench_loaders_take_the_torch_threads_on_the_cpu_and_their_own_default_on_a_gpu(monkeypatch):
    """On the CPU the loaders share the cores with torch (settings.threads); on a GPU they take the
    Loader's default, which keeps raw-pixel stores at a few threads (more only contend)."""
    assert bench_run.Settings(threads=3, device="cpu").loader_threads == 3
    assert bench_run.Settings(threads=3, device="cuda:0").loader_threads is None
    seen = []

    def capture(*args, **kwargs):
        seen.append(kwargs["threads"])
        raise _Captured

    monkeypatch.setattr(bench_run, "run_recipe", capture)
    for device in ("cpu", "cuda:0"):
        with pytest.raises(_Captured):
            bench_run.run_one("full", 1.0, 0, ("a.beton", "b.beton"), bench_run.Settings(threads=3, device=device))
    assert seen == [3, None]


# ------------------------------------------------------------------------------ GPU busy sampling


def test_gpu_utilization_is_none_on_the_cpu_and_where_nvml_is_missing(monkeypatch):
    assert train_device.gpu_utilization(torch.device("cpu")) is None

    def no_nvml(device=None):
        raise ModuleNotFoundError("nvidia-ml-py does not seem to be installed")

    monkeypatch.setattr(torch.cuda, "utilization", no_nvml)
    assert train_device.gpu_utilization(torch.device("cuda")) is None
    monkeypatch.setattr(torch.cuda, "utilization", lambda device=None: 42)
    assert train_device.gpu_utilization(torch.device("cuda")) == 42.0


def test_sampler_averages_readings_per_mark_and_is_none_without_them():
    """Readings are handed to the sampler's thread one by one (a queue), so how the threads are
    scheduled cannot move a reading across a mark (the timed version failed once on a loaded machine)."""
    import queue
    import time

    readings = queue.Queue()

    def read(device):
        try:
            return readings.get(timeout=0.01)
        except queue.Empty:
            return None  # as when nvml has no new figure: not a sample

    def sampled(busy, count):
        while len(busy._samples) < count:
            time.sleep(0.001)

    readings.put(50.0)  # the first: nvml answers
    with train_device.GpuBusySampler(torch.device("cuda"), interval=0.001, read=read) as busy:
        for value in [20.0, 30.0, 40.0]:
            readings.put(value)
        sampled(busy, 3)
        first = busy.mark()
        for _ in range(7):
            readings.put(80.0)
        sampled(busy, 10)
        second = busy.mark()
        assert busy.mark() is None  # nothing new since the last mark
    assert (first, second) == (30.0, 80.0)
    assert busy.mean() == 65.0  # (90 + 7 * 80) / 10, over every sample
    with train_device.GpuBusySampler(torch.device("cpu")) as idle:  # the CPU: no thread, no figure
        assert idle._thread is None
    assert idle.mean() is None and idle.mark() is None
    with train_device.GpuBusySampler(torch.device("cuda"), read=lambda device: None) as missing:
        assert missing._thread is None  # nvml does not answer: nothing sampled, the run goes on
    assert missing.mean() is None


def test_gpu_busy_of_weights_epochs_by_their_seconds():
    history = [{"gpu_busy_pct": 90.0, "epoch_s": 3.0}, {"gpu_busy_pct": 50.0, "epoch_s": 1.0},
               {"gpu_busy_pct": None, "epoch_s": 5.0}]
    assert train_recipe.gpu_busy_of(history) == 80.0
    assert train_recipe.gpu_busy_of([{"gpu_busy_pct": None, "epoch_s": 1.0}]) is None
    assert train_recipe.gpu_busy_of([]) is None


def test_run_recipe_records_each_epochs_gpu_busy_and_keeps_the_callers_on_epoch_end(monkeypatch, tiny_stores):
    class FakeSampler:
        def __init__(self, device):
            self.device, self.marks = device, iter([61.0, 63.0])

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

        def mark(self):
            return next(self.marks)

    monkeypatch.setattr(train_recipe, "GpuBusySampler", FakeSampler)
    ends = []
    recipe = train_recipe.RECIPE.replace(epochs=2, batch_size=32, widths=(8, 16, 32))
    random.seed(12345)
    states = random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state()
    _, history = train_recipe.run_recipe(recipe, "uniform_random", 0.5, 0, tiny_stores, device="cpu", threads=1,
                                         progress=False, log=None,
                                         on_epoch_end=lambda r: ends.append({**r}))  # as the callback saw it
    assert [r["gpu_busy_pct"] for r in history] == [61.0, 63.0]
    assert [r["gpu_busy_pct"] for r in ends] == [61.0, 63.0]  # train's per-epoch logs write what it sees
    # the caller's random streams as they were (they were left seeded with the run's seed)
    assert random.getstate() == states[0] and np.array_equal(np.random.get_state()[1], states[1])
    assert torch.equal(torch.get_rng_state(), states[2])
    assert [r["epoch"] for r in ends] == [0, 1]


# ------------------------------------------------------------------------------ result files


def test_train_log_json_records_the_device_and_null_gpu_fields_on_the_cpu(tmp_path, tiny_stores, capsys):
    log = tmp_path / "log.json"
    train, val = (str(path) for path in tiny_stores)
    assert fastprune_cli.main(["train", "--train", train, "--val", val, "--device", "cpu", "--epochs", "1",
                               "--width", "8", "--batch-size", "32", "--threads", "1", "--no-progress",
                               "--amp", "off", "--log-json", str(log)]) == 0
    assert "training on cpu, fp32" in capsys.readouterr().out
    document = json.loads(log.read_text())
    assert {key: document[key] for key in ("device", "gpu", "cuda", "precision", "gpu_busy_pct")} == \
        {"device": "cpu", "gpu": None, "cuda": None, "precision": "off", "gpu_busy_pct": None}
    assert document["torch"] == torch.__version__
    assert document["arguments"]["device"] == "cpu"
    assert [r["gpu_busy_pct"] for r in document["history"]] == [None]
    # what else the numbers depend on (the README says so): version, JPEG decoder, torch threads
    assert {key: document[key] for key in ("fastprune", "jpeg_decoder", "simd", "torch_threads")} == \
        {"fastprune": fastprune.__version__, "jpeg_decoder": fastprune.build_info()["jpeg_decoder"],
         "simd": fastprune.build_info()["simd"], "torch_threads": 1}


def test_bench_result_records_the_device_and_each_runs_gpu_busy(tmp_path, tiny_stores):
    from fastprune.bench import compare

    from fastprune.bench.run import flushing_denormals

    out = tmp_path / "result.json"
    threads, flushing = torch.get_num_threads(), flushing_denormals()
    comparison = compare(*tiny_stores, strategies=("full",), epochs=1, threads=1, amp="off", device="cpu",
                         batch_size=32, widths=(8, 16, 32), out=out)
    # the benchmark's process settings (1 thread, denormals flushed) do not outlive the call
    assert (torch.get_num_threads(), flushing_denormals()) == (threads, flushing)
    written = json.loads(out.read_text())
    assert written["device"] == {"device": "cpu", "gpu": None, "torch": torch.__version__, "cuda": None,
                                 "precision": "off"}
    assert "device" not in written["settings"]  # the CPU: as files written before devices were recorded
    assert [run["gpu_busy_pct"] for run in comparison.runs] == [None]
    assert [r["gpu_busy_pct"] for r in comparison.runs[0]["history"]] == [None]


def test_device_record_names_the_gpu_and_cuda_version_on_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA Fake")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    assert train_device.device_record("cuda") == {"device": "cuda:0", "gpu": "NVIDIA Fake",
                                                  "torch": torch.__version__, "cuda": "13.0"}
    assert train_device.device_record("cpu")["cuda"] is None


# ------------------------------------------------------------------------------ warm-up


def _shape_recorder(monkeypatch):
    shapes = []
    real_build = train_recipe.ModelSpec.build

    def build(self, *args, **kwargs):
        model = real_build(self, *args, **kwargs)
        model.register_forward_pre_hook(lambda module, inputs: shapes.append((module.training, tuple(inputs[0].shape))))
        return model

    monkeypatch.setattr(train_recipe.ModelSpec, "build", build)
    return shapes


def test_warm_up_steps_run_the_model_at_the_batch_and_crop_the_runs_will_time(monkeypatch):
    from fastprune.train.data import DataSpec

    shapes = _shape_recorder(monkeypatch)
    data = DataSpec(num_classes=4, channels=3, mean=(0.5,) * 3, std=(0.2,) * 3, image_size="12x10")
    recipe = train_recipe.RECIPE.replace(batch_size=16, widths=(8, 16, 32))
    assert bench_run.warm_up_steps(recipe, data, "cpu", amp="off", batch_size=16, eval_batch_size=7) == 3
    assert shapes == [(True, (16, 3, 12, 10))] * 3 + [(False, (7, 3, 12, 10))]
    shapes.clear()
    bench_run.warm_up_steps(recipe.replace(crop=8), data, "cpu", amp="off", batch_size=5, eval_batch_size=5, steps=1)
    assert shapes == [(True, (5, 3, 8, 8)), (False, (5, 3, 8, 8))]


@pytest.mark.parametrize("cuda", [False, True])
def test_warm_up_adds_model_steps_on_cuda_only(monkeypatch, tiny_stores, cuda):
    calls = []
    monkeypatch.setattr(bench_run, "run_one", lambda *args, **kwargs: calls.append("run"))
    monkeypatch.setattr(bench_run, "warm_up_steps", lambda recipe, data, device, **kw: calls.append(
        ("steps", str(device), kw["batch_size"], kw["eval_batch_size"])))
    _pretend_cuda(monkeypatch, cuda)
    settings = bench_run.Settings(threads=1, device="cuda" if cuda else "cpu")
    bench_run.warm_up(tiny_stores, settings, train_recipe.RECIPE.replace(batch_size=64))
    assert calls == ([("steps", "cuda:0", 64, 40)] if cuda else []) + ["run"]


# ------------------------------------------------------------------------------ on a GPU


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_on_cuda_a_run_trains_there_and_records_the_gpu(tmp_path, tiny_stores):
    from fastprune.bench import compare

    out = tmp_path / "result.json"
    comparison = compare(*tiny_stores, strategies=("full",), epochs=2, threads=1, device="auto",
                         batch_size=32, widths=(8, 16, 32), out=out)
    written = json.loads(out.read_text())
    assert written["device"]["device"].startswith("cuda") and written["device"]["gpu"]
    assert written["device"]["cuda"] == torch.version.cuda and written["device"]["precision"] in ("bf16", "fp16")
    assert written["settings"]["device"].startswith("cuda")
    busy = comparison.runs[0]["gpu_busy_pct"]
    assert busy is None or 0 <= busy <= 100  # None where nvml is missing
    assert types.SimpleNamespace(**written["device"]).torch == torch.__version__


def test_the_markdown_report_names_the_gpu_only_for_gpu_results():
    from fastprune.bench import report

    gpu = {"device": {"device": "cuda:0", "gpu": "NVIDIA H200", "torch": "2.11", "cuda": "13.0", "precision": "bf16"}}
    assert report._on_gpu(gpu) == ", on cuda:0 (NVIDIA H200, CUDA 13.0, bf16)"
    assert report._on_gpu({"device": {"device": "cpu", "gpu": None, "cuda": None, "precision": "off"}}) == ""
    assert report._on_gpu({}) == ""  # written before devices were recorded: the CPU


def test_flushing_denormals_reads_the_state_torch_sets():
    from fastprune.bench.run import flushing_denormals

    before = flushing_denormals()
    try:
        if not torch.set_flush_denormal(True):
            pytest.skip("this CPU cannot flush denormals")
        assert flushing_denormals()
        torch.set_flush_denormal(False)
        assert not flushing_denormals()
    finally:
        torch.set_flush_denormal(before)


def _tiny_checkpoint_objects():
    model = torch.nn.Linear(4, 2)
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def test_checkpoints_save_and_restore_the_gpu_generator(tmp_path, monkeypatch):
    """A GPU run's dropout masks draw from its GPU's generator, which checkpoints left out: a
    resumed run replayed the masks of its first epochs (CUDA-path audit). Only the model's GPU is
    saved and restored (a DDP rank does not own the others). CUDA pretended here; the test below
    runs it for real on a GPU."""
    import fastprune.train.checkpoints as checkpoints
    from fastprune.errors import CheckpointError
    from fastprune.train.checkpoints import load_checkpoint, save_checkpoint

    saved, restored = torch.arange(16, dtype=torch.uint8), []
    monkeypatch.setattr(checkpoints, "model_device", lambda model: torch.device("cuda", 1))
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: saved.clone() if device.index == 1 else None)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.append((state, device)))
    model, optimizer = _tiny_checkpoint_objects()
    save_checkpoint(tmp_path / "run.pt", model, optimizer, None, None, None, [])
    load_checkpoint(tmp_path / "run.pt", model, optimizer)
    [(state, device)] = restored
    assert torch.equal(state, saved) and device == torch.device("cuda", 1)
    state = torch.load(tmp_path / "run.pt", weights_only=True)
    state["rng"]["cuda"] = "tampered"
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="RNG states do not restore"):
        load_checkpoint(tmp_path / "bad.pt", model, optimizer)
    monkeypatch.setattr(checkpoints, "model_device", lambda model: torch.device("cpu"))  # a CPU run
    save_checkpoint(tmp_path / "cpu.pt", model, optimizer, None, None, None, [])
    assert torch.load(tmp_path / "cpu.pt", weights_only=True)["rng"]["cuda"] is None
    load_checkpoint(tmp_path / "run.pt", model, optimizer)  # a GPU checkpoint resumed on the CPU
    assert len(restored) == 1


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_on_cuda_a_checkpoint_continues_the_gpu_random_stream(tmp_path):
    from fastprune.train.checkpoints import load_checkpoint, save_checkpoint

    model, optimizer = _tiny_checkpoint_objects()
    model.cuda()
    torch.cuda.manual_seed_all(0)
    torch.rand(3, device="cuda")
    save_checkpoint(tmp_path / "run.pt", model, optimizer, None, None, None, [])
    expected = torch.rand(5, device="cuda")
    torch.rand(7, device="cuda")  # the stream moves on
    load_checkpoint(tmp_path / "run.pt", model, optimizer)
    assert torch.equal(torch.rand(5, device="cuda"), expected)
