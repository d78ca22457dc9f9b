"""Every engine accelerate drives gives the trajectory of one process with the same global batch.

Each test runs ``distributed_worker.py`` in two gloo processes on the CPU (``torchrun``) and
compares its losses and final weights with another run: one process with the same global batch,
or, for methods that sample (each process then draws its own samples), the same two processes
under plain DDP. FSDP2 and DeepSpeed run their real sharding code (see the worker); the
teacher is sharded too under FSDP2 and ZeRO-3, and on-policy samples come from gathered weights.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import free_port, torchrun

WORKER = Path(__file__).with_name("distributed_worker.py")
# on the CPU even where a GPU is visible (two processes cannot share one GPU under NCCL)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": ""}


# Results of runs without checkpoints by the worker's arguments (all but the output file) and
# environment: several tests compare with the same run (one process's, or an engine's uninterrupted
# run), which is deterministic, so it runs once
_RUNS: dict[tuple, dict] = {}


def run(out: Path, tokenizer_dir: Path, micro: int, accum: int, method: str, engine: str = "single",
        dtype: str = "float64", checkpoints: Path | None = None, stop_after: int = 0, models: Path | None = None,
        shard_teacher: bool = True, env: dict[str, str] | None = None, teacher_dtype: str = "") -> dict:
    """The worker's results: in one process for ``single``, else in two (torchrun)."""
    args = [str(WORKER), str(out), str(tokenizer_dir), str(micro), str(accum), method, engine, dtype,
            str(checkpoints or ""), str(stop_after), "1", str(models or ""), "1" if shard_teacher else "0", teacher_dtype]
    env = {**ENV, **(env or {})}
    key = (*args[2:], *sorted(env.items()))
    if checkpoints is None and key in _RUNS:
        return copy.deepcopy(_RUNS[key])
    if engine == "single":
        proc = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-12000:]
    else:
        torchrun(args, env)
    result = json.loads(out.read_text())
    if checkpoints is None:  # a run with checkpoints resumes from them, or stops: never one to reuse
        _RUNS[key] = copy.deepcopy(result)
    return result


@pytest.fixture(scope="session")
def saved_models(tmp_path_factory, tokenizer):
    """A folder with the worker's student and teacher saved as checkpoints in a dtype (made once per
    dtype), to load as ``mgsr-bench train`` loads them."""
    from conftest import tiny_model

    folders: dict[str, Path] = {}

    def saved(dtype: str) -> Path:
        if dtype not in folders:
            folders[dtype] = tmp_path_factory.mktemp(f"models-{dtype}")
            vocab = len(tokenizer)
            for role, model in (("student", tiny_model(vocab, seed=1)), ("teacher", tiny_model(vocab, seed=2, hidden=48))):
                model.to(getattr(torch, dtype)).save_pretrained(folders[dtype] / role)
        return folders[dtype]

    return saved


def needs_deepspeed(engine: str) -> None:
    if engine.startswith("zero"):
        pytest.importorskip("deepspeed", reason="DeepSpeed engines need the deepspeed extra")


@pytest.mark.slow
@pytest.mark.parametrize("engine,method,dtype,rel,micro,accum", [
    ("ddp", "kd", "float64", 1e-9, 8, 1), ("ddp", "sft", "float64", 1e-9, 8, 1),
    ("fsdp", "kd", "float64", 1e-9, 4, 2), ("fsdp", "sft", "float64", 1e-9, 8, 1),
    ("zero2", "kd", "float64", 1e-7, 4, 2),
    # ZeRO-3 refuses float64 and takes the full-logits loss: float32 rounding apart, the same run
    ("zero3", "kd", "float32", 1e-5, 4, 2),
])
def test_two_processes_follow_the_single_process_trajectory(tmp_path, tokenizer_dir, engine, method, dtype, rel,
                                                            micro, accum):
    """Two processes with micro-batch x accumulation 8 x 1 or 4 x 2 against one with 8 x 2: the
    same global batch of 16, so the same losses and the same final weights; the teacher's layers
    are split in two under FSDP2 and ZeRO-3 (when the method uses a teacher)."""
    needs_deepspeed(engine)
    one = run(tmp_path / "one.json", tokenizer_dir, 8, 2, method, "single", dtype)
    two = run(tmp_path / "two.json", tokenizer_dir, micro, accum, method, engine, dtype)
    assert two["tokens"] == one["tokens"]  # the same global batches
    assert two["losses"] == pytest.approx(one["losses"], rel=rel)
    assert two["weights"] == pytest.approx(one["weights"], rel=rel)
    sharded_teacher = engine in ("fsdp", "zero3") and method != "sft"  # SFT never places the teacher
    assert two["teacher_held"] == (0.5 if sharded_teacher else 1.0)
    assert two["timeout_s"] == 1234  # train.process_timeout_s reached the process group
    if engine == "fsdp":  # every micro-batch reduce-scatters into sharded gradients (no_sync would keep them whole)
        assert len(two["grad_shares"]) == 4 * accum
        assert two["grad_shares"] == pytest.approx([0.5] * 4 * accum, abs=0.02)


@pytest.mark.slow
@pytest.mark.parametrize("shard_teacher", [True, False])
def test_fsdp_rank0_loading_reads_the_weights_on_rank_0_only_and_trains_as_one_process(tmp_path, tokenizer_dir,
                                                                                      saved_models, shard_teacher):
    """Under FSDP with ``fsdp_cpu_ram_efficient_loading`` (the environment ``accelerate launch``
    exports for fsdp.yaml) rank 1 builds both models without reading a weight, receives them from
    rank 0 (while sharding them, or whole for a teacher kept unsharded), and the run follows the
    one-process trajectory."""
    models = saved_models("float64")
    one = run(tmp_path / "one.json", tokenizer_dir, 8, 2, "kd", "single", models=models)
    two = run(tmp_path / "two.json", tokenizer_dir, 4, 2, "kd", "fsdp", models=models, shard_teacher=shard_teacher,
              env={"ACCELERATE_USE_FSDP": "true", "FSDP_CPU_RAM_EFFICIENT_LOADING": "true"})
    assert one["loaded_weights"] == [True]
    assert two["loaded_weights"] == [True, False]  # rank 1 read none
    assert two["teacher_held"] == (0.5 if shard_teacher else 1.0)
    assert two["losses"] == pytest.approx(one["losses"], rel=1e-9)
    assert two["weights"] == pytest.approx(one["weights"], rel=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("init_flag,shard_teacher,teacher_dtype", [
    (True, True, "float32"), (True, False, "float32"), (False, True, "float32"), (True, True, "bfloat16")])
def test_zero3_init_flag_partitions_the_models_as_they_load_and_trains_as_one_process(tmp_path, tokenizer_dir,
                                                                                      saved_models, init_flag,
                                                                                      shard_teacher, teacher_dtype):
    """Under ZeRO-3 with ``zero3_init_flag`` (zero3.yaml) each of two processes holds half of the
    student's weights, and of a sharded teacher's, as soon as they are loaded: no process builds
    either whole. A teacher kept whole loads whole, and with the flag off both load whole (as in a
    single process). A bf16 teacher (a pair's dtype) is partitioned in bf16 although the engine
    runs in fp32 (``zero.Init`` would cast it to the config's precision). Either way the run follows
    the one-process trajectory."""
    needs_deepspeed("zero3")
    models = saved_models("float32")
    one = run(tmp_path / "one.json", tokenizer_dir, 8, 2, "kd", "single", "float32", models=models,
              teacher_dtype=teacher_dtype)
    two = run(tmp_path / "two.json", tokenizer_dir, 4, 2, "kd", "zero3", "float32", models=models,
              shard_teacher=shard_teacher, env={"ACCELERATE_DEEPSPEED_ZERO3_INIT": str(init_flag).lower()},
              teacher_dtype=teacher_dtype)
    assert one["teacher_dtype"] == two["teacher_dtype"] == f"torch.{teacher_dtype}"
    assert one["held_at_load"] == {"student": 1.0, "teacher": 1.0}
    assert two["held_at_load"] == {"student": 0.5 if init_flag else 1.0,
                                   "teacher": 0.5 if init_flag and shard_teacher else 1.0}
    assert two["loaded_weights"] == [True, True]  # the partitions hold the checkpoint's weights
    assert two["teacher_held"] == (0.5 if shard_teacher else 1.0)
    # A bf16 teacher's logits carry 8 significant bits, and a CPU with native bf16 kernels
    # (AVX512-BF16) rounds a batch of 4 per process differently from one batch of 8: the losses then
    # agree to about 3e-5, not fp32's 1e-5 (the weights, a small step from the same start, still
    # agree to 1e-5). Wrong or unloaded weights move the losses by far more.
    assert two["losses"] == pytest.approx(one["losses"], rel=1e-5 if teacher_dtype == "float32" else 1e-3)
    assert two["weights"] == pytest.approx(one["weights"], rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("init_flag", [True, False])
def test_under_zero3_partitioned_loading_rank_0s_files_supply_every_weight_and_loaded_whole_they_are_compared(
        tmp_path, tokenizer_dir, saved_models, init_flag):
    """Rank 1 reads a teacher and a student whose checkpoints differ from rank 0's in one weight
    each, as a machine with another revision in its cache would. Partitioned as they load
    (``zero3_init_flag``), transformers gathers each module's slices and writes rank 0's values
    alone into them, so the run is exactly the one where every process read rank 0's files and the
    other machine's files cannot matter. Loaded whole (the flag off), each process holds what it
    read itself, and the launch is refused in one line naming process 1 before a step."""
    needs_deepspeed("zero3")
    from mgsr_bench.models import load_model

    shutil.copytree(saved_models("float32"), tmp_path / "m0")
    for role in ("teacher", "student"):
        model = load_model(tmp_path / "m0" / role, torch.float32)
        with torch.no_grad():
            model.get_output_embeddings().weight[3, :4] += 0.25
        model.save_pretrained(tmp_path / "m1" / role)
    env = {"ACCELERATE_DEEPSPEED_ZERO3_INIT": str(init_flag).lower()}
    if not init_flag:
        args = [str(WORKER), str(tmp_path / "two.json"), str(tokenizer_dir), "4", "2", "kd", "zero3", "float32",
                "", "0", "1", str(tmp_path / "m{rank}")]
        proc = torchrun(args, {**ENV, **env}, succeed=False)
        assert proc.returncode != 0
        assert "process 1 loaded other teacher weights than process 0" in proc.stdout + proc.stderr
        assert not (tmp_path / "two.json").exists()
        return
    # the first run is the init-flag test's (run once per session)
    same = run(tmp_path / "same.json", tokenizer_dir, 4, 2, "kd", "zero3", "float32", models=saved_models("float32"),
               env=env, teacher_dtype="float32")
    mixed = run(tmp_path / "mixed.json", tokenizer_dir, 4, 2, "kd", "zero3", "float32", models=tmp_path / "m{rank}",
                env=env, teacher_dtype="float32")
    assert mixed["held_at_load"] == {"student": 0.5, "teacher": 0.5}
    assert mixed["loaded_weights"] == [True, True]  # rank 1's student holds rank 0's weights, not its own file's
    assert mixed["losses"] == same["losses"]
    assert mixed["weights"] == same["weights"]


@pytest.mark.slow
@pytest.mark.parametrize("engine,dtype,rel", [("fsdp", "float64", 1e-9), ("zero3", "float32", 1e-5)])
def test_on_policy_mgsr_with_sharded_models_matches_ddp(tmp_path, tokenizer_dir, engine, dtype, rel):
    """MGSR sampling from the student at every step, SCRG revising with the teacher: with the
    student and the teacher sharded (their weights gathered for sampling), each process draws the
    same samples and the run follows DDP's trajectory."""
    needs_deepspeed(engine)
    method = "mgsr,init_threshold=1.0"
    ddp = run(tmp_path / "ddp.json", tokenizer_dir, 8, 1, method, "ddp", dtype)
    sharded = run(tmp_path / "sharded.json", tokenizer_dir, 8, 1, method, engine, dtype)
    assert sharded["sources"] == ddp["sources"] == ["student"] * 4
    assert sharded["tokens"] == ddp["tokens"]
    assert sharded["losses"] == pytest.approx(ddp["losses"], rel=rel)
    assert sharded["weights"] == pytest.approx(ddp["weights"], rel=rel)
    assert sharded["teacher_held"] == 0.5


@pytest.mark.slow
@pytest.mark.parametrize("engine,method,dtype", [
    ("fsdp", "kd", "float64"), ("zero2", "kd", "float64"), ("zero3", "kd", "float32"),
    # each process samples its own rows: each must resume with its own random stream and replay buffer
    ("ddp", "mgsr,init_threshold=1.0", "float64"), ("fsdp", "distillm,init_threshold=0.5", "float64"),
])
def test_a_stopped_multi_process_run_resumes_to_the_uninterrupted_result(tmp_path, tokenizer_dir, engine, method,
                                                                        dtype):
    """Two processes stopped after the checkpoint of step 3 (of 4), then the same command again: it
    resumes from that checkpoint (each process's shards of the weights and optimiser state under
    FSDP2 and ZeRO, its own RNG and source state under every engine) and ends with exactly the
    losses, best step and final weights of a run that was never stopped."""
    needs_deepspeed(engine)
    whole = run(tmp_path / "whole.json", tokenizer_dir, 4, 2, method, engine, dtype)
    folder = tmp_path / "checkpoints"
    stopped = run(tmp_path / "stopped.json", tokenizer_dir, 4, 2, method, engine, dtype, folder, stop_after=3)
    assert stopped == {"stopped_after": 3}
    kept = sorted(p.name for p in folder.iterdir())  # the newest two, each complete; nothing half-written
    parts = ["step-0000002.parts", "step-0000003.parts"] if engine != "ddp" else []
    best = "best-0000002.parts" if engine == "fsdp" else "best-0000002.pt"  # validated at step 2, written once
    assert kept == sorted(["step-0000002.pt", "step-0000003.pt", *parts, best])
    resumed = run(tmp_path / "resumed.json", tokenizer_dir, 4, 2, method, engine, dtype, folder)
    assert (whole["steps_trained"], resumed["steps_trained"]) == (4, 1)
    assert resumed["sources"] == whole["sources"] and resumed["tokens"] == whole["tokens"]
    assert resumed["losses"] == pytest.approx(whole["losses"], rel=1e-12)
    assert resumed["best_step"] == whole["best_step"]
    assert resumed["weights"] == pytest.approx(whole["weights"], rel=1e-12)


@pytest.mark.slow
def test_a_checkpoint_folder_that_some_process_cannot_see_is_refused(tmp_path, tokenizer_dir):
    """Each process given its own folder (as on nodes with their own disks): with checkpoints to
    write, one line naming the process and the fix, before the first step, nothing written; with
    none to write, the run goes on; and a checkpoint that only the main process can see is never
    resumed by it alone (the processes would continue from different steps)."""
    def worker(out: Path, folder: str, stop: int = 0, every: int = 1):
        args = [str(WORKER), str(out), str(tokenizer_dir), "8", "1", "kd", "ddp", "float64", folder, str(stop),
                str(every)]
        return torchrun(args, ENV, succeed=False)

    blind = "process 1 cannot see the main process's files in " + str(tmp_path / "disk-1")
    proc = worker(tmp_path / "a.json", str(tmp_path / "disk-{rank}"))
    assert proc.returncode != 0 and not (tmp_path / "a.json").exists()
    assert blind in proc.stderr and "put --out on a filesystem every process shares" in proc.stderr
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("disk")] == ["disk-0"]
    assert not list((tmp_path / "disk-0").iterdir())

    proc = worker(tmp_path / "b.json", str(tmp_path / "disk-{rank}"), every=0)  # nothing to write: no need
    assert proc.returncode == 0 and len(json.loads((tmp_path / "b.json").read_text())["losses"]) == 4

    stopped = worker(tmp_path / "c.json", str(tmp_path / "disk-0"), stop=2)  # both processes write disk-0
    assert stopped.returncode == 0 and (tmp_path / "disk-0" / "step-0000002.pt").is_file()
    proc = worker(tmp_path / "d.json", str(tmp_path / "disk-{rank}"), every=0)
    assert proc.returncode != 0 and blind in proc.stderr and not (tmp_path / "d.json").exists()


def test_fsdp_on_an_accelerate_known_to_fail_or_without_an_accelerator_is_refused_in_one_line(monkeypatch):
    """Measured: under FSDP2 the first step fails with accelerate 1.12-1.14 (torch 2.13); and on a
    machine without an accelerator accelerate ignores the FSDP setting (plain data parallel, rank 1
    training the models it built without weights: a NaN loss at step 1 through the CLI). Either
    launch is refused before any model loads; other engines are left alone."""
    import accelerate

    from mgsr_bench.errors import UserError
    from mgsr_bench.train import distributed
    from mgsr_bench.train.distributed import check_fsdp_accelerate

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch` exports for fsdp.yaml
    monkeypatch.setattr(distributed, "_accelerator_available", lambda: False)
    with pytest.raises(UserError, match=r"^this launch asks for FSDP, which accelerate runs only on GPUs .*ddp\.yaml$"):
        check_fsdp_accelerate()
    monkeypatch.setattr(distributed, "_accelerator_available", lambda: True)
    check_fsdp_accelerate()
    monkeypatch.setattr(accelerate, "__version__", "1.14.0")
    with pytest.raises(UserError, match=r"^FSDP2 training needs accelerate >= 1\.15 \(found 1\.14\.0.*pip install -U"):
        check_fsdp_accelerate()
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "false")
    monkeypatch.setattr(distributed, "_accelerator_available", lambda: False)
    check_fsdp_accelerate()  # DDP, ZeRO, one process: no such requirement
    monkeypatch.setattr(accelerate, "__version__", "1.15.0")
    check_fsdp_accelerate(True)  # the engine itself (tests set an FSDP2 plugin on the CPU)


@pytest.mark.slow
def test_the_zero3_generation_copy_gathers_one_module_at_a_time_and_tied_weights_once(monkeypatch):
    """The unsharded generation copy under ZeRO-3 asks DeepSpeed for one module's own weights per
    gather (never the whole model at once, which would hold it twice), gathers a tied weight once,
    and gives an independent model with the same weights, buffers and outputs."""
    deepspeed = pytest.importorskip("deepspeed", reason="the ZeRO-3 copy needs the deepspeed extra")
    import contextlib

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from mgsr_bench.train.distributed import _generation_copy

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=16, n_layer=2, n_head=2, n_positions=32)).eval()
    owner = {id(p): name for name, m in model.named_modules() for p in m.parameters(recurse=False)}
    gathers: list[list[int]] = []

    @contextlib.contextmanager
    def recording(params, modifier_rank=None):
        gathers.append([id(p) for p in params])
        yield

    monkeypatch.setattr(deepspeed.zero, "GatheredParameters", recording)
    copy = _generation_copy(model)
    asked = [i for g in gathers for i in g]
    assert len(asked) == len(set(asked)) == len(list(model.parameters()))  # every weight once, the tied one too
    assert all(len({owner[i] for i in g}) == 1 for g in gathers if g)  # one module per gather
    assert max(len(g) for g in gathers) <= 2  # a linear layer's weight and bias
    assert copy is not model and not copy.training
    assert copy.lm_head.weight is copy.transformer.wte.weight  # still tied
    ours, theirs = copy.state_dict(), model.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(copy.parameters(), model.parameters()))
    ids = torch.tensor([[1, 2, 3, 4]])
    assert torch.equal(copy(ids).logits, model(ids).logits)


SUITE_UNDER_LAUNCH = '''
import json, os, sys
from pathlib import Path
from mgsr_bench.models import weights_digest
from mgsr_bench.suite.build import ensure_suite, suite_config_from_dict
suite = ensure_suite(suite_config_from_dict(json.loads(sys.argv[1])))
digests = {part: weights_digest(suite.root / part) for part in ("teacher", "student-init")}
Path(sys.argv[2], f"rank{os.environ['RANK']}.json").write_text(json.dumps(digests))
'''


@pytest.mark.slow
def test_a_suite_built_under_a_launch_is_the_single_process_build(tmp_path, monkeypatch):
    """Two processes started as ``accelerate launch`` starts them for zero3.yaml (mixed precision
    off), the suite not built yet: the machine's first process builds it once, in a process of its
    own without the launch's settings, and both processes get the suite a single process builds, to
    the bit (a build under ZeRO-3 itself would save empty partitions, and every process would build)."""
    pytest.importorskip("deepspeed", reason="the launch under test is a DeepSpeed one")
    import dataclasses

    from mgsr_bench.models import weights_digest
    from mgsr_bench.suite.build import ModelShape, SuiteConfig, ensure_suite

    small = {"steps": 4, "micro_batch": 8, "lr": 3e-3, "eval_every": 4, "val_metric": "loss", "seed": 0}
    config = SuiteConfig(name="tiny-launch-test", n_train=200, n_valid=16, n_test=8, vocab_size=300,
                         teacher=ModelShape(32, 1, 2, 64), student=ModelShape(16, 1, 2, 32),
                         teacher_train=small, student_init_train=small)
    monkeypatch.setenv("MGSR_BENCH_CACHE", str(tmp_path / "plain"))
    plain = ensure_suite(config)
    expected = {part: weights_digest(plain.root / part) for part in ("teacher", "student-init")}
    script = tmp_path / "suite_under_launch.py"
    script.write_text(SUITE_UNDER_LAUNCH)
    launch = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3",
              "ACCELERATE_DEEPSPEED_ZERO3_INIT": "true", "ACCELERATE_MIXED_PRECISION": "no",
              "MGSR_BENCH_CACHE": str(tmp_path / "launched")}
    proc = torchrun([str(script), json.dumps(dataclasses.asdict(config)), str(tmp_path)], {**ENV, **launch})
    assert (proc.stdout + proc.stderr).count("building suite tiny-launch-test") == 1
    for rank in (0, 1):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == expected


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists and has not ended (a zombie has)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.slow
def test_a_launched_process_stopped_while_its_child_builds_the_suite_ends_the_build(tmp_path):
    """SIGTERM, a launcher's way of stopping its processes, to the machine's first process while the
    suite builds in its child process: the build ends with it, its temporary folder removed, no
    suite written (the build does not go on training on its own, holding the machine)."""
    import dataclasses
    import signal
    import time

    from mgsr_bench.suite.build import ModelShape, SuiteConfig

    endless = {"steps": 10 ** 6, "micro_batch": 8, "lr": 3e-3, "eval_every": 10 ** 6, "val_metric": "loss"}
    config = SuiteConfig(name="tiny-stopped-test", n_train=200, n_valid=16, n_test=8, vocab_size=300,
                         teacher=ModelShape(32, 1, 2, 64), student=ModelShape(16, 1, 2, 32),
                         teacher_train=endless, student_init_train=endless)
    cache = tmp_path / "cache"
    launched = {**ENV, "MGSR_BENCH_CACHE": str(cache), "WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0"}
    log = tmp_path / "log"  # a file, not a pipe: a build left running would hold a pipe open
    with log.open("w") as out:
        first = subprocess.Popen([sys.executable, "-m", "mgsr_bench.suite.build",
                                  json.dumps(dataclasses.asdict(config))], env=launched, stdout=out, stderr=out)
    builder = None
    try:
        deadline = time.monotonic() + 120
        while not (building := list(cache.glob(".*.building-*"))):  # the child's folder: it is building
            assert first.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        builder = int(building[0].name.rpartition("-")[2])
        time.sleep(1.0)  # into its training
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=60)
        assert first.returncode == 128 + signal.SIGTERM, log.read_text()  # ended by its handler, not killed
        assert not _running(builder), log.read_text()
        assert list(cache.iterdir()) == [], log.read_text()  # no folder left, no suite
    finally:
        first.kill()
        if builder is not None and _running(builder):
            os.kill(builder, signal.SIGKILL)


def _accelerate_launch(engine: str) -> list[str]:
    """``accelerate launch`` with the shipped ``ENGINE.yaml`` config, on two processes, in float32."""
    configs = Path(__file__).resolve().parents[1] / "mgsr_bench" / "launch" / "accelerate"
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(configs / f"{engine}.yaml"),
            "--num_processes", "2", "--mixed_precision", "no"]


@pytest.mark.slow
def test_a_lora_student_under_ddp_and_zero2_follows_the_single_process_trajectory(hub_style_pair):
    """``mgsr-bench train --pair`` with a LoRA pair, launched by ``accelerate launch`` on two
    processes with ddp.yaml and zero2.yaml (micro-batch 4 x 2 accumulation), against one process
    with 4 x 4: the same losses (float32) and the same merged student. Before the adapters were
    drawn from the run's seed, each engine started from other adapters (1e-3 apart by step 3)."""
    pytest.importorskip("peft", reason="a LoRA pair needs the lora extra")
    pytest.importorskip("deepspeed", reason="zero2.yaml needs the deepspeed extra")
    from safetensors.torch import load_file

    tmp_path = hub_style_pair
    pair = (f"  teacher: {tmp_path / 'teacher'}\n  student: {tmp_path / 'student'}\n  dtype: float32\n"
            "  finetune: lora\n  lora: {r: 4, alpha: 8, dropout: 0.0, target_modules: [q_proj, v_proj]}\n"
            "  micro_batch: 4\n")
    (tmp_path / "pairs.yaml").write_text(f"lora-one:\n{pair}  grad_accum: 4\nlora-two:\n{pair}  grad_accum: 2\n")
    env = {**ENV, "MGSR_BENCH_PAIRS": str(tmp_path / "pairs.yaml")}
    common = ["train", "kd", "--train-data", str(tmp_path / "train.jsonl"),
              "--valid-data", str(tmp_path / "valid.jsonl"), "--steps", "4", "--checkpoint-every", "0"]

    def train(out: str, pair: str, launch: list[str]) -> tuple[list[float], dict]:
        proc = subprocess.run([*launch, "-m", "mgsr_bench", *common, "--pair", pair, "--out", str(tmp_path / out)],
                              env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
        history = json.loads((tmp_path / out / "training.json").read_text())["training"]["history"]
        return [h["loss"] for h in history], load_file(tmp_path / out / "model" / "model.safetensors")

    one_losses, one_weights = train("one", "lora-one", [sys.executable])
    for engine in ("ddp", "zero2"):
        launch = [*_accelerate_launch(engine), "--main_process_port", str(free_port())]
        losses, weights = train(engine, "lora-two", launch)
        assert losses == pytest.approx(one_losses, rel=1e-5), engine
        assert weights.keys() == one_weights.keys() and not any("lora" in k for k in weights)
        for name, w in weights.items():
            torch.testing.assert_close(w, one_weights[name], rtol=1e-5, atol=1e-6, msg=f"{engine}: {name}")


def _train_command(p: Path, out: str, *launch: str, teacher: str = "teacher", data: str = "train.jsonl") -> list[str]:
    """``accelerate launch`` (ddp.yaml, two processes, float32) of ``mgsr-bench train kd`` on ``hub_style_pair``."""
    return [*_accelerate_launch("ddp"), *launch, "-m", "mgsr_bench", "train", "kd",
            "--teacher", str(p / teacher), "--student", str(p / "student"), "--train-data", str(p / data),
            "--valid-data", str(p / "valid.jsonl"), "--steps", "4", "--checkpoint-every", "2", "--out", str(p / out)]


def _on_two_machines(p: Path, out: str, *files: dict[str, str]) -> list[subprocess.CompletedProcess]:
    """``_train_command`` as a launch over two machines (static rendezvous on this host, one process
    each), machine ``r`` reading ``files[r]`` (``teacher``, ``data``; default the same): what each
    printed, stderr into stdout."""
    port = str(free_port())
    machines = [subprocess.Popen(_train_command(p, out, "--num_machines", "2", "--machine_rank", str(rank),
                                                "--main_process_ip", "127.0.0.1", "--main_process_port", port,
                                                "--rdzv_backend", "static", "--same_network", **mine),
                                 env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                for rank, mine in enumerate(files or ({}, {}))]
    printed = [m.communicate(timeout=600)[0] for m in machines]
    return [subprocess.CompletedProcess(m.args, m.returncode, text, "") for m, text in zip(machines, printed)]


@pytest.mark.slow
def test_a_launch_over_two_machines_trains_as_two_processes_on_one(hub_style_pair):
    """``accelerate launch`` over two machines of one process each (static rendezvous, as
    multi_node.yaml sets it; both on this host, so each process is its machine's LOCAL_RANK 0)
    gives the losses and the student of one machine running two processes, and the results are
    written once, by the global main process."""
    from safetensors.torch import load_file

    p = hub_style_pair

    def results(out: str) -> tuple[list[float], dict]:
        history = json.loads((p / out / "training.json").read_text())["training"]["history"]
        return [h["loss"] for h in history], load_file(p / out / "model" / "model.safetensors")

    one = subprocess.run(_train_command(p, "one", "--main_process_port", str(free_port())), env=ENV,
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-6000:]
    machines = _on_two_machines(p, "two")
    assert [m.returncode for m in machines] == [0, 0], machines[0].stdout[-4000:] + machines[1].stdout[-4000:]
    assert ["model saved to" in m.stdout for m in machines] == [True, False]  # machine 1's process is rank 1
    (losses, weights), (one_losses, one_weights) = results("two"), results("one")
    assert losses == pytest.approx(one_losses, rel=1e-6) and len(losses) == 4
    for name, w in weights.items():
        torch.testing.assert_close(w, one_weights[name], rtol=1e-6, atol=1e-7, msg=name)
    assert sorted(f.name for f in (p / "two").iterdir()) == ["model", "training.json"]


@pytest.mark.slow
def test_machines_that_read_other_weights_or_data_are_refused_in_one_line_before_training(hub_style_pair):
    """The same command on two machines whose files differ (here: machine 1 names another folder):
    a teacher with one weight changed, or training data with one record changed, ends the launch on
    every machine with one line naming the difference, before the first step."""
    from safetensors.torch import load_file, save_file

    from mgsr_bench.data.jsonl import read_records, write_records

    p = hub_style_pair
    shutil.copytree(p / "teacher", p / "other-teacher")
    weights = load_file(p / "teacher" / "model.safetensors")
    name = sorted(weights)[-1]
    weights[name] = weights[name].clone()
    weights[name].view(-1)[0] += 0.01
    save_file(weights, p / "other-teacher" / "model.safetensors", metadata={"format": "pt"})
    rows = read_records(p / "train.jsonl")
    rows[7]["output"] += " again"
    write_records(p / "other-train.jsonl", rows)
    for other, says in (({"teacher": "other-teacher"}, f"process 1 loaded other teacher weights than process 0 "
                                                       f"({name} differs): give every machine the same checkpoint"),
                        ({"data": "other-train.jsonl"}, "process 1 has other settings, training data or tokenizer "
                                                        "than process 0")):
        out = "run-" + next(iter(other))
        machines = _on_two_machines(p, out, {}, other)
        for m in machines:
            assert m.returncode != 0 and m.stdout.count(f"mgsr-bench: error: {says}") == 1, m.stdout[-4000:]
            assert "train kd:" not in m.stdout, m.stdout[-4000:]  # no step began (the launcher's own report follows)
        assert not [f for f in (p / out).rglob("*") if f.is_file()]  # no checkpoint, model or summary
