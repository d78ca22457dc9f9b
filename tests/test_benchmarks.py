"""The benchmarks' own machinery at toy sizes: what each measures runs, and what each refuses is
refused. (The measurements themselves, against the planner's declared figures, are in test_scale.py.)"""

import pytest
import torch

from mgsr_bench.errors import UserError


@pytest.mark.parametrize("kind", ["gelu", "relu", "gated"])
def test_each_layer_saves_the_same_bytes_so_differences_of_depth_give_one_layer(kind):
    """The activation benchmark takes one layer's bytes as the difference between a two- and a
    one-layer body: that holds only if every layer saves the same bytes."""
    from mgsr_bench.benchmarks.activation_memory import saved_bytes

    one, two, three = (saved_bytes(kind, layers, 64, 16, "float32") for layers in (1, 2, 3))
    assert 0 < one < two and two - one == three - two
    assert saved_bytes(kind, 1, 64, 32, "float32") > one  # a longer sequence saves more


@pytest.mark.parametrize("path", ["naive", "chunked"])
def test_the_chunked_loss_benchmark_measures_both_paths(path):
    from mgsr_bench.benchmarks.chunked_loss import measure

    row = measure(path, vocab=50, tokens=24, hidden=8, teacher_hidden=12, chunk=5, method="kd", device="cpu",
                  repeats=2)
    assert (row["path"], row["vocab"], row["tokens"], row["method"]) == (path, 50, 24, "kd")
    assert row["seconds"] > 0 and row["peak_extra_gib"] >= 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_the_chunked_loss_benchmark_refuses_cuda_where_there_is_none(capsys):
    from mgsr_bench.benchmarks.chunked_loss import main

    with pytest.raises(SystemExit) as exc:
        main(["--device", "cuda"])
    assert exc.value.code == 2 and "torch sees no CUDA device here" in capsys.readouterr().err


def test_the_generation_benchmark_names_the_variable_when_the_shared_sets_are_missing(tmp_path, monkeypatch):
    from mgsr_bench.benchmarks.generation import shared_prompts

    monkeypatch.setenv("MGSR_BENCH_SHARED", str(tmp_path))
    with pytest.raises(UserError, match="shared evaluation data not found at .*; set MGSR_BENCH_SHARED"):
        shared_prompts(2)


def test_the_loss_memory_benchmark_declares_each_methods_figure_and_refuses_without_a_resettable_peak(
        tokenizer, monkeypatch):
    from mgsr_bench.benchmarks import loss_memory
    from mgsr_bench.methods import get_method

    if loss_memory.RESET.exists():  # Linux: one measurement, its declared figure the method's own
        out = loss_memory.measure(tokenizer, ["sft"])
        assert set(out) == {"sft"} and out["sft"]["declared"] == get_method("sft").chunk_tensors
    monkeypatch.setattr(loss_memory, "RESET", loss_memory.Path("/nonexistent/clear_refs"))
    with pytest.raises(UserError, match="resettable peak .*run it on Linux"):
        loss_memory.measure(tokenizer, ["sft"])


def test_the_step_time_configurations_are_methods_that_sample_at_every_step():
    """Each configuration the step-time benchmark times builds with its options, the sampling ones
    generate from the first step on, and its fixed-weights learning rate is a valid one."""
    from mgsr_bench.benchmarks.step_time import CONFIGS, MODES
    from mgsr_bench.config import train_config
    from mgsr_bench.methods import get_method

    assert set(CONFIGS) == {"kd", "distillm", "mgsr"}
    for label, (name, options) in CONFIGS.items():
        method = get_method(name, **options)
        assert method.name == name, label
        if options:
            assert method.options()["init_threshold"] == 1.0, label
    for mode, lr in MODES.items():
        if lr is not None:
            assert train_config({"lr": lr}).lr == lr, mode


def test_bench_with_a_teacher_cache_runs_sft_as_the_floor_and_a_cached_run_after_each_method_that_can_read_it():
    from mgsr_bench.benchmarks.bench import _with_cached

    assert _with_cached(["kd", "gkd", "rkl", "mgsr"], 64) == ["sft", "kd", "kd+cache", "gkd", "rkl", "rkl+cache",
                                                              "mgsr"]
    with pytest.raises(UserError, match="--teacher-cache takes k within 1..50257"):
        _with_cached(["kd"], 0)


@pytest.mark.slow
def test_bench_measures_a_cached_kd_step_beside_the_live_one(capsys):
    from mgsr_bench.benchmarks.bench import run_one

    live = run_one("kd", "cpu-small", 2, 16, 1, 1)
    cached = run_one("kd", "cpu-small", 2, 16, 1, 1, cache_k=8)
    assert cached["method"] == "kd+cache" and cached["cache_k"] == 8 and live["method"] == "kd"
    assert 0 < cached["cache_mb_per_1k_tokens"] < 0.1  # 8 x (4 + 2) bytes per token, and the offsets
