"""Scale on CPU: the pair registry, the memory planner against measured peaks, LoRA students."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mgsr_bench.errors import UserError
from mgsr_bench.models.pairs import get_pair, load_pairs

from conftest import SHARED, tiny_model


def test_the_registry_has_the_field_s_pairs_and_users_can_extend_it(tmp_path, monkeypatch):
    pairs = load_pairs()
    expected = {"tiny", "gpt2-xl-gpt2", "gpt2-xl-gpt2-medium", "gpt2-xl-gpt2-large", "opt-13b-opt-1.3b",
                "opt-13b-opt-2.7b", "opt-13b-opt-6.7b", "opt-6.7b-opt-1.3b", "llama-2-13b-llama-2-7b",
                "open-llama-7b-open-llama-3b", "qwen2.5-7b-qwen2.5-0.5b", "qwen2.5-7b-qwen2.5-1.5b"}
    assert expected <= set(pairs)
    assert pairs["open-llama-7b-open-llama-3b"].finetune == "lora"
    # DistiLLM's evaluation prepends the tokenizer's BOS, MiniLLM's current one does not
    assert [p.name for p in pairs.values() if p.eval_bos] == ["open-llama-7b-open-llama-3b"]
    assert all(p.accelerate_config is None or p.accelerate_config.is_file() for p in pairs.values())
    mine = tmp_path / "pairs.yaml"
    mine.write_text("mine:\n  teacher: /models/t\n  student: /models/s\n  accelerate: ddp\n"
                    "gpt2-xl-gpt2:\n  teacher: /local/gpt2-xl\n  student: /local/gpt2\n")
    monkeypatch.setenv("MGSR_BENCH_PAIRS", str(mine))
    assert get_pair("mine").student == "/models/s" and get_pair("gpt2-xl-gpt2").teacher == "/local/gpt2-xl"
    mine.write_text("bad:\n  teacher: t\n  student: s\n  reference: lmops\n")
    with pytest.raises(UserError, match="pair 'bad': reference must be minillm or distillm"):
        load_pairs()
    mine.write_text("bad:\n  teacher: t\n  student: s\n  micro_bach: 4\n")
    with pytest.raises(UserError, match="pair 'bad': unknown key 'micro_bach'"):
        load_pairs()
    monkeypatch.delenv("MGSR_BENCH_PAIRS")
    with pytest.raises(UserError, match="unknown pair 'gpt2-xl-gtp2' \\(did you mean 'gpt2-xl-gpt2'"):
        get_pair("gpt2-xl-gtp2")


_MEASURE = """
import json, sys
import torch
from transformers import GPT2Config, GPT2LMHeadModel
from mgsr_bench.config import train_config
from mgsr_bench.data.collate import Example
from mgsr_bench.methods import get_method
from mgsr_bench.train import train
from mgsr_bench.models.pairs import get_pair
from mgsr_bench.train.memory_plan import ALLOWANCE, SAMPLING, Sampling, plan_memory, plan_pair, shape_of
torch.set_num_threads(2)
def status(field):
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(field + ":"))
method, ckpt, tokenizer = sys.argv[1], sys.argv[2] == "1", sys.argv[3]
if tokenizer in ("none", "tiny"):  # token ids only: a small vocabulary
    if tokenizer == "none":  # wider GPT-2 models
        V, S, B, widths = 8000, 256, 4, ((512, 6, 8), (384, 4, 6))
    else:  # the registry's tiny pair: the tiny suite's LLaMA shapes at its own settings
        from mgsr_bench.suite.build import SUITES
        suite, pair = SUITES["tiny"], get_pair("tiny")
        V, S, B = suite.vocab_size, 512, pair.micro_batch
    class Tok:
        eos_token_id = pad_token_id = 0
        def __len__(self):
            return V
    tok = Tok()
    rows = [Example(torch.randint(1, V, (S // 2,)).tolist(), torch.randint(1, V, (S // 2,)).tolist())
            for _ in range(max(16, 2 * B))]
else:  # the real GPT-2 tokenizer (MGSR's spans read text): V = 50257, narrow models
    from mgsr_bench.benchmarks.generation import gpt2_tokenizer
    tok = gpt2_tokenizer()
    V, S, B, widths = len(tok), 256, 8, ((256, 4, 4), (128, 2, 2))
    words = "the cat sat on the mat and looked at the dog in the garden with a red ball".split()
    g = torch.Generator().manual_seed(0)
    def ids(n):
        text = " ".join(words[i] for i in torch.randint(0, len(words), (S,), generator=g).tolist())
        return tok(text, add_special_tokens=False).input_ids[:n]
    rows = [Example(ids(S // 2), ids(S // 2 - 1) + [tok.eos_token_id]) for _ in range(16)]
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current resident size
before = status("VmRSS")
torch.manual_seed(0)
if tokenizer == "tiny":
    teacher, student = suite.teacher.build(V, seed=0), suite.student.build(V, seed=1)
else:
    teacher, student = (GPT2LMHeadModel(GPT2Config(vocab_size=V, n_embd=h, n_layer=l, n_head=a, n_positions=S))
                        for h, l, a in widths)
# gkd on its own samples every step; mgsr's schedule samples while its buffer fills (SCRG revises them)
m = get_method(method, **{"gkd": {"lmbda": 1.0}, "mgsr": {"init_threshold": 1.0}}.get(method, {}))
cfg = train_config({"steps": 2, "micro_batch": B, "eval_every": 100, "val_metric": "loss", "val_size": 4,
                    "mixed_precision": "no", "gradient_checkpointing": ckpt, "gen_max_new_tokens": S // 2})
result = train(student, teacher, tok, m, rows, [], rows[:4], cfg)
peak = status("VmHWM")
if tokenizer == "tiny":  # the registry entry's own plan, as `mgsr-bench plan tiny` prints it
    plan = plan_pair(pair, method, seq_len=S, gradient_checkpointing=ckpt)
else:
    plan = plan_memory(shape_of(teacher.config), shape_of(student.config), dtype="float32",
                       compute_dtype="float32", micro_batch=B, seq_len=S, gradient_checkpointing=ckpt,
                       sampling=Sampling.of_method(method), loss_tensors=m.chunk_tensors, device="cpu")
training = max(sum(p.values()) for k, p in plan.phases.items() if k != SAMPLING)
print(json.dumps({"measured": (peak - before) / 2 ** 30, "planned": plan.total,
                  "modelled": plan.total - plan.held[ALLOWANCE], "phase": plan.peak_phase,
                  "sources": [h["source"] for h in result.history],
                  # training and sampling summed: what a plan without phases would count
                  "summed": sum(plan.held.values()) + training + sum(plan.phases.get(SAMPLING, {}).values())}))
"""


def _measure(method: str, ckpt: str, tokenizer: str) -> dict:
    """Two training steps in a fresh process: the resident peak they add (GiB), the plan (``planned``)
    and its modelled terms without the runtime allowance (``modelled``). glibc's allocator runs with a
    fixed mmap threshold, so that freed tensors leave the resident set: by default it raises the
    threshold as large blocks are freed and keeps later ones in its heap, 0.0-0.3 GiB more between
    runs (the allowance); fixed, the peak is the live memory and the same from run to run."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    proc = subprocess.run([sys.executable, "-c", _MEASURE, method, ckpt, tokenizer], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's resettable peak RSS")
def test_the_planner_tracks_the_measured_peak_of_a_training_run_on_cpu():
    """A GPT-2-shaped pair (29M -> 13M parameters, 4 x 256 tokens, fp32) trained with kd for two
    steps in a fresh process: the modelled terms are within 15% of the peak resident memory the run
    added (Linux's VmHWM, reset after the imports), with and without gradient checkpointing (they
    came within 2% and 8%), and both agree that checkpointing saves memory."""
    out = {ckpt: _measure("kd", ckpt, "none") for ckpt in ("0", "1")}
    for ckpt in out:
        assert out[ckpt]["modelled"] == pytest.approx(out[ckpt]["measured"], rel=0.15), out
    assert out["1"]["planned"] < out["0"]["planned"] and out["1"]["measured"] < out["0"]["measured"]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's resettable peak RSS")
def test_the_planner_tracks_the_measured_peaks_of_the_registry_s_tiny_pair():
    """The registry's `tiny` pair (the tiny suite's LLaMA shapes, 1.97M -> 0.32M, V = 1024) at its
    own settings (32 x 512 tokens, fp32, the CPU) trained for two steps from random weights, with kd,
    kd with gradient checkpointing, and gkd on its own samples: the modelled terms of `mgsr-bench
    plan tiny` are within 15% of each measured peak (they came within 2-10%). With checkpointing
    the teacher's forward and the backward's recomputed layer are apart: summed, they would say
    0.45 GiB against 0.32 measured. Korthikanti's GPT formula says 1.18 GiB for kd against 0.79
    measured (under the default allocator)."""
    out = {(m, ckpt): _measure(m, ckpt, "tiny") for m, ckpt in (("kd", "0"), ("kd", "1"), ("gkd", "0"))}
    assert out["gkd", "0"]["sources"] == ["student", "student"]
    for key in out:
        assert out[key]["modelled"] == pytest.approx(out[key]["measured"], rel=0.15), (key, out)
    checkpointed, whole = out["kd", "1"], out["kd", "0"]
    assert checkpointed["planned"] < whole["planned"] and checkpointed["measured"] < whole["measured"], out


@pytest.mark.slow
def test_each_architecture_s_declared_activation_bytes_are_what_its_layers_save():
    """The planner's per-token activation coefficients (GPT-2's GELU, OPT's ReLU and LLaMA's gated
    MLP, in fp32 and under bf16 autocast) against the bytes autograd saves in transformers' own
    layers, counted by the activation-memory benchmark: each within 10% (0.5 byte near zero)."""
    proc = subprocess.run([sys.executable, "-m", "mgsr_bench.benchmarks.activation_memory"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(out) == {"float32", "bfloat16"} and all(set(k) == {"gelu", "relu", "gated"} for k in out.values())
    for dtype, kinds in out.items():
        for kind, coefficients in kinds.items():
            for name, c in coefficients.items():
                assert c["declared"] == pytest.approx(c["measured"], rel=0.1, abs=0.5), (dtype, kind, name, c)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's resettable peak RSS")
@pytest.mark.skipif(not (SHARED / "tokenizers" / "gpt2").is_dir(), reason="needs the shared GPT-2 tokenizer")
def test_the_planner_tracks_the_peaks_of_sampling_methods_with_their_own_loss_and_scrgs_phase():
    """At V = 50257 (8 x 256 tokens, 128 sampled, fp32): gkd, whose JSD chunk holds 11 fp32
    (rows, V) tensors, and mgsr, whose SCRG phase (the sampler's kept logits and the revision's
    divergence) is as large as its training phase. Each plan's modelled terms are within 15% of
    the measured peak (they came within 1-3%); mgsr's training and sampling summed, as a plan
    without phases would count them, would be more than 50% over."""
    gkd, mgsr = _measure("gkd", "0", "gpt2"), _measure("mgsr", "0", "gpt2")
    assert gkd["sources"] == ["student", "student"] and mgsr["sources"] == ["student", "student"]
    for out in (gkd, mgsr):
        assert out["modelled"] == pytest.approx(out["measured"], rel=0.15), (gkd, mgsr)
    assert mgsr["summed"] > 1.5 * mgsr["measured"], mgsr


# Parameter counts of the registry's models as their model cards state them, to three figures
PUBLISHED = {"openai-community/gpt2": 124e6, "openai-community/gpt2-medium": 355e6,
             "openai-community/gpt2-large": 774e6, "openai-community/gpt2-xl": 1.56e9, "facebook/opt-1.3b": 1.32e9,
             "facebook/opt-2.7b": 2.65e9, "facebook/opt-6.7b": 6.66e9, "facebook/opt-13b": 12.9e9,
             "meta-llama/Llama-2-7b-hf": 6.74e9, "meta-llama/Llama-2-13b-hf": 13.0e9,
             "openlm-research/open_llama_3b_v2": 3.43e9, "openlm-research/open_llama_7b_v2": 6.74e9,
             "Qwen/Qwen2.5-0.5B-Instruct": 0.494e9, "Qwen/Qwen2.5-1.5B-Instruct": 1.54e9,
             "Qwen/Qwen2.5-7B-Instruct": 7.62e9}


def test_every_registry_model_is_planned_offline_at_its_published_size(offline):
    """With no Hub (offline) and no local copy, the planner builds each registered model's config
    from the table of published shapes; the parameter counts are those the model cards state."""
    from mgsr_bench.train.memory_plan import model_config, shape_of

    names = {p.teacher for p in load_pairs().values()} | {p.student for p in load_pairs().values()}
    assert names - {"tiny"} == set(PUBLISHED)
    for name, size in PUBLISHED.items():
        assert shape_of(model_config(name)).params == pytest.approx(size, rel=5e-3), name
    with pytest.raises(UserError, match="cannot read the config of 'nobody/nothing'"):
        model_config("nobody/nothing")


def test_every_registered_pair_fits_its_recommended_settings_by_the_planner(offline):
    """Each pair's micro-batch, accumulation, GPU count, memory and launcher config, planned for
    every registered method (its sampling and its loss chunk: MGSR's SCRG, the JSD family's 11
    tensors per row)."""
    from mgsr_bench.methods.registry import available_methods
    from mgsr_bench.train.memory_plan import plan_pair

    for pair in load_pairs().values():
        for method in available_methods():
            plan = plan_pair(pair, method)
            assert plan.fits, f"{pair.name}, {method}:\n{plan.render()}"


def test_the_plan_counts_what_the_run_holds_plus_the_largest_of_its_phases():
    """A training step's stages (the teacher's forward, the loss, a checkpointed layer's
    recomputation) follow one another, and sampling and validation run between optimizer steps,
    when torch's gradients, activations and the loss chunk are gone: the total is the held terms
    plus the largest phase, and the render says which phase it counted. Long samples on a large
    step batch make sampling the peak; the loss is the training peak at V = 50257, the recomputed
    layer with checkpointing on the CPU."""
    from mgsr_bench.train.memory_plan import LOSS_PASS, RECOMPUTE, SAMPLING, TEACHER_PASS, plan_pair

    pair = get_pair("gpt2-xl-gpt2")
    for plan in (plan_pair(pair, "mgsr"), plan_pair(pair, "mgsr", grad_accum=16), plan_pair(pair, "kd")):
        sums = {name: sum(terms.values()) for name, terms in plan.phases.items()}
        assert plan.total == pytest.approx(sum(plan.held.values()) + max(sums.values()))
        assert f"{plan.peak_phase} (counted)" in plan.render()
    offline, short, long = plan_pair(pair, "kd"), plan_pair(pair, "mgsr"), plan_pair(pair, "mgsr", grad_accum=16)
    assert list(offline.phases) == [TEACHER_PASS, LOSS_PASS] and list(long.phases)[-1] == SAMPLING
    assert short.peak_phase == LOSS_PASS and long.peak_phase == SAMPLING
    assert "student gradients (fp32)" in short.phases[LOSS_PASS] and "generation KV cache" in long.phases[SAMPLING]
    assert long.total < sum(long.held.values()) + sum(sum(p.values()) for p in long.phases.values())
    checkpointed = plan_pair(get_pair("tiny"), "kd", gradient_checkpointing=True)
    assert checkpointed.peak_phase == RECOMPUTE and "teacher forward (one layer, no grad)" not in \
        checkpointed.phases[RECOMPUTE]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's resettable peak RSS")
@pytest.mark.skipif(not (SHARED / "tokenizers" / "gpt2").is_dir(), reason="needs the shared GPT-2 tokenizer")
def test_each_methods_declared_loss_memory_is_what_its_chunk_measures():
    """The planner's loss term is ``Method.chunk_tensors`` fp32 (rows, V) tensors; the loss-memory
    benchmark measures them for every registered method at V = 50257 (a fresh process): each
    declared figure is within 10% of its measurement, so a loss that grows fails here."""
    proc = subprocess.run([sys.executable, "-m", "mgsr_bench.benchmarks.loss_memory"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(out) >= {"sft", "kd", "gkd", "distillm", "mgsr"}
    for name, figures in out.items():
        assert figures["declared"] == pytest.approx(figures["measured"], rel=0.1), (name, figures)


def test_sharding_splits_the_teacher_and_validation_and_sampling_gather_the_models():
    from mgsr_bench.train.memory_plan import Sampling, Shape, plan_memory

    teacher = Shape(params=13_000_000_000, layers=40, hidden=5120, heads=40, kv_dim=5120, vocab=32000)
    student = Shape(params=7_000_000_000, layers=32, hidden=4096, heads=32, kv_dim=4096, vocab=32000)
    offline = plan_memory(teacher, student, gpus=8, strategy="fsdp", micro_batch=2)
    assert offline.terms["teacher weights (frozen, sharded)"] == pytest.approx(2 * 13e9 / 8 / 2 ** 30)
    assert "generation KV cache" not in offline.terms
    # validation gathers the student whatever the method (in the compute dtype); the offline teacher never
    assert offline.terms["weights gathered (validation, sampling)"] == pytest.approx(2 * 7e9 / 2 ** 30)
    whole = plan_memory(teacher, student, gpus=8, strategy="fsdp", micro_batch=2, shard_teacher=False)
    assert whole.terms["teacher weights (frozen, replicated)"] == pytest.approx(2 * 13e9 / 2 ** 30)
    mgsr = plan_memory(teacher, student, gpus=8, strategy="zero3", micro_batch=2, sampling=Sampling.of_method("mgsr"))
    assert mgsr.terms["weights gathered (validation, sampling)"] == pytest.approx(2 * (7e9 + 13e9) / 2 ** 30)
    assert mgsr.terms["rewrite: kept sampler logits (fp32)"] == pytest.approx(2 * 256 * 32000 * 4 / 2 ** 30)
    gkd = plan_memory(teacher, student, gpus=8, strategy="ddp", micro_batch=2, sampling=Sampling.of_method("gkd"))
    assert "weights gathered (validation, sampling)" not in gkd.terms and gkd.terms["generation KV cache"] > 0
    assert gkd.terms["DDP gradient buckets (fp32)"] == pytest.approx(4 * 7e9 / 2 ** 30)  # beside the gradients
    single = plan_memory(teacher, student, gpus=1, strategy="ddp", micro_batch=2)
    assert "DDP gradient buckets (fp32)" not in single.terms
    assert Sampling.of_method("seqkd") == Sampling(teacher=True)


def test_deepspeed_plans_its_own_fp32_copy_and_zero3_plans_full_logits():
    """DeepSpeed holds the module in the compute dtype beside its partitioned fp32 master copy; ZeRO-3
    frees the heads' weights after each forward, so the harness takes the full-logits path there
    and the plan counts every response row and the whole logits instead of one chunk."""
    from mgsr_bench.train.memory_plan import Shape, plan_memory

    teacher = Shape(params=7_000_000_000, layers=28, hidden=3584, heads=28, kv_dim=512, vocab=152064)
    student = Shape(params=1_500_000_000, layers=28, hidden=1536, heads=12, kv_dim=256, vocab=151936)
    fsdp = plan_memory(teacher, student, gpus=4, strategy="fsdp", micro_batch=8)
    zero2 = plan_memory(teacher, student, gpus=4, strategy="zero2", micro_batch=8)
    zero3 = plan_memory(teacher, student, gpus=4, strategy="zero3", micro_batch=8)
    assert fsdp.terms["student weights (float32)"] == pytest.approx(4 * 1.5e9 / 4 / 2 ** 30)
    assert zero2.terms["student weights (bfloat16)"] == pytest.approx(2 * 1.5e9 / 2 ** 30)
    assert zero3.terms["student weights (bfloat16)"] == pytest.approx(2 * 1.5e9 / 4 / 2 ** 30)
    for plan in (zero2, zero3):
        assert plan.terms["student fp32 master weights (DeepSpeed's)"] == pytest.approx(4 * 1.5e9 / 4 / 2 ** 30)
    assert "student fp32 master weights (DeepSpeed's)" not in fsdp.terms
    rows = 8 * 512 // 2
    assert fsdp.terms["loss chunk (fp32 x 11)"] == pytest.approx(11 * 1024 * 152064 * 4 / 2 ** 30)
    assert zero3.terms["loss on all response rows (fp32 x 11)"] == pytest.approx(11 * rows * 152064 * 4 / 2 ** 30)
    assert zero3.terms["full logits (student + teacher)"] == pytest.approx(2 * 8 * 512 * 152064 * 2 / 2 ** 30)
    unchunked = plan_memory(teacher, student, gpus=4, strategy="fsdp", micro_batch=8, loss_chunk=0, loss_tensors=7)
    assert "loss chunk (fp32 x 7)" not in unchunked.terms and "full logits (student + teacher)" in unchunked.terms
    assert unchunked.terms["loss on all response rows (fp32 x 7)"] == pytest.approx(7 * rows * 152064 * 4 / 2 ** 30)


def test_plan_cli_says_what_fits_and_what_to_change(cli):
    fits = cli("plan", "tiny")
    assert fits.returncode == 0 and "fits:" in fits.stdout and "student activations" in fits.stdout
    tight = cli("plan", "tiny", "--gpu-mem", "0.2", "--micro-batch", "64")
    assert tight.returncode == 1 and "does NOT fit" in tight.stdout
    assert "turn on gradient checkpointing" in tight.stdout and "lower train.micro_batch (now 64)" in tight.stdout
    lora = cli("plan", "open-llama-7b-open-llama-3b", "--strategy", "fsdp")
    assert lora.returncode == 2 and lora.stdout == "" and lora.stderr.strip().splitlines() == [
        "mgsr-bench: error: open-llama-7b-open-llama-3b trains a LoRA student, which the harness runs under ddp "
        "or zero2 (its adapter is small): plan it with --strategy ddp or zero2"]
    squeezed = cli("plan", "open-llama-7b-open-llama-3b", "--gpu-mem", "10")
    assert squeezed.returncode == 1
    assert "--strategy fsdp" not in squeezed.stdout and "train a LoRA" not in squeezed.stdout
    listed = cli("list", "pairs")
    assert "open-llama-7b-open-llama-3b" in listed.stdout and "lora" in listed.stdout


ZERO3_FILE = {"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": "auto"}


@pytest.mark.parametrize("launch, ds_file", [
    ({"ACCELERATE_USE_FSDP": "true"}, None),
    ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}, None),
    ({"ACCELERATE_USE_DEEPSPEED": "true"}, json.dumps(ZERO3_FILE)),  # the stage only in deepspeed_config_file
    ({"ACCELERATE_USE_DEEPSPEED": "true"}, "{not json"),
], ids=["fsdp", "zero3", "zero3-in-config-file", "unreadable-config-file"])
def test_a_lora_pair_under_a_sharding_launch_is_refused_before_anything_loads(tmp_path, monkeypatch, cli, launch,
                                                                            ds_file):
    """The environment ``accelerate launch`` exports for fsdp.yaml or zero3.yaml, or for an
    accelerate config whose ``deepspeed_config_file`` asks for stage 3: a LoRA pair stops in one line
    before its tokenizer or a model loads (the Hub is out of reach here: any loading would fail
    differently) and before the output folder is made; a config file that is not JSON is named."""
    import accelerate
    from packaging.version import Version

    from mgsr_bench.train import distributed
    from mgsr_bench.train.distributed import FSDP2_ACCELERATE

    if "ACCELERATE_USE_FSDP" in launch and Version(accelerate.__version__) < Version(FSDP2_ACCELERATE):
        pytest.skip(f"below accelerate {FSDP2_ACCELERATE} train refuses any FSDP launch first")
    if ds_file is not None:
        (tmp_path / "ds.json").write_text(ds_file)
        launch = {**launch, "ACCELERATE_DEEPSPEED_CONFIG_FILE": str(tmp_path / "ds.json")}
    out = tmp_path / "run"
    for split in ("t", "v"):
        (tmp_path / f"{split}.jsonl").write_text(json.dumps({"instruction": "Add 2 and 3.", "input": "",
                                                             "output": "5"}) + "\n")
    for name, value in launch.items():
        monkeypatch.setenv(name, value)
    # as on a GPU machine (FSDP without an accelerator is refused first): nothing here reaches a device
    monkeypatch.setattr(distributed, "_accelerator_available", lambda: True)
    proc = cli("train", "kd", "--pair", "open-llama-7b-open-llama-3b", "--train-data", str(tmp_path / "t.jsonl"),
               "--valid-data", str(tmp_path / "v.jsonl"), "--out", str(out))
    expected = ("a LoRA student trains under DDP or ZeRO-2 (its adapter is small): launch with ddp.yaml or "
                "zero2.yaml, or train the full student") if ds_file != "{not json" else (
        f"the DeepSpeed config file {tmp_path / 'ds.json'} (deepspeed_config_file in the accelerate config) is "
        "not readable JSON (JSONDecodeError): fix the file or the path")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [f"mgsr-bench: error: {expected}"]
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine with a GPU runs FSDP")
def test_an_fsdp_launch_without_an_accelerator_is_refused_before_anything_loads(tmp_path, monkeypatch, cli):
    """What ``accelerate launch`` exports for fsdp.yaml, on this CPU machine: one line, before the
    suite or a model loads, nothing written (accelerate would have run plain data parallel, rank 1
    on models built without weights: NaN at step 1)."""
    out, cache = tmp_path / "run", tmp_path / "cache"
    for name, value in (("ACCELERATE_USE_FSDP", "true"), ("FSDP_CPU_RAM_EFFICIENT_LOADING", "true"),
                        ("MGSR_BENCH_CACHE", str(cache))):
        monkeypatch.setenv(name, value)
    proc = cli("train", "kd", "--quick", "--out", str(out))
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "mgsr-bench: error: this launch asks for FSDP, which accelerate runs only on GPUs (or other accelerators) "
        "and this machine has none: on the CPU launch with ddp.yaml"]
    assert not out.exists() and not cache.exists()


@pytest.mark.parametrize("env, stage", [
    ({}, None),  # not a DeepSpeed launch
    ({"ACCELERATE_USE_DEEPSPEED": "true"}, 2),  # accelerate's default stage
    ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}, 3),
    ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3", "file": {"stage": 2}}, 2),
    ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3", "file": {"stage": "auto"}}, 3),
    ({"ACCELERATE_USE_DEEPSPEED": "true", "file": {}}, 2),
])
def test_the_launched_zero_stage_is_read_as_accelerate_reads_it(tmp_path, monkeypatch, env, stage):
    """The stage the early LoRA refusal sees agrees with the one accelerate's DeepSpeed plugin ends
    up with: the file's, where it names one, else the exported one, else 2."""
    from accelerate.utils import DeepSpeedPlugin

    from mgsr_bench.train.distributed import launched_zero_stage

    for name in ("ACCELERATE_USE_DEEPSPEED", "ACCELERATE_DEEPSPEED_ZERO_STAGE", "ACCELERATE_DEEPSPEED_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    env = dict(env)
    if "file" in env:
        (tmp_path / "ds.json").write_text(json.dumps({"zero_optimization": env.pop("file")}))
        env["ACCELERATE_DEEPSPEED_CONFIG_FILE"] = str(tmp_path / "ds.json")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert launched_zero_stage() == stage
    if stage is not None:
        assert DeepSpeedPlugin().zero_stage == stage


def _anonymous_bytes() -> int:
    """This process's resident anonymous memory now (Linux): its own copies, not the page cache
    that memory-mapped checkpoints (shared by the processes of a machine) count as."""
    import re

    status = Path("/proc/self/status").read_text()
    return int(re.search(r"RssAnon:\s+(\d+) kB", status).group(1)) * 1024


@pytest.mark.slow
def test_a_model_built_without_its_weights_has_the_checkpoints_structure_and_takes_no_memory(tmp_path):
    """``load_model(weights=False)`` (the processes that receive weights from rank 0 under FSDP):
    the same parameters, dtypes, tied embeddings and computed buffers as the loaded model, none of
    its weights read, and no memory for them, where loading copies them: a 16-bit checkpoint (as
    Hub checkpoints are) loaded as an fp32 student, 128 MB here."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from mgsr_bench.models import count_parameters, load_model

    config = LlamaConfig(vocab_size=16000, hidden_size=512, intermediate_size=1376, num_hidden_layers=8,
                         num_attention_heads=8, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    size = 4 * count_parameters(model)
    model.to(torch.bfloat16).save_pretrained(tmp_path / "model")
    del model
    before = _anonymous_bytes()
    empty = load_model(tmp_path / "model", torch.float32, weights=False)
    grown_empty = _anonymous_bytes() - before
    loaded = load_model(tmp_path / "model", torch.float32)
    grown_loaded = _anonymous_bytes() - before - grown_empty
    assert grown_empty < 0.1 * size < 0.8 * size < grown_loaded, (grown_empty, grown_loaded, size)
    shapes = {k: (v.shape, v.dtype) for k, v in loaded.state_dict().items()}
    assert {k: (v.shape, v.dtype) for k, v in empty.state_dict().items()} == shapes
    assert empty.lm_head.weight is empty.model.embed_tokens.weight
    assert not torch.equal(empty.lm_head.weight, loaded.lm_head.weight)  # nothing was read
    assert all(torch.equal(b, dict(loaded.named_buffers())[k]) for k, b in empty.named_buffers())
    assert not empty.training and not loaded.training


def test_a_lora_student_trains_only_its_adapters_through_the_chunked_loss_and_saves_merged(tmp_path, tokenizer,
                                                                                             records):
    pytest.importorskip("peft")
    from mgsr_bench.config import train_config
    from mgsr_bench.data.collate import collate, tokenize_records
    from mgsr_bench.methods import get_method
    from mgsr_bench.models import load_model
    from mgsr_bench.models.lora import apply_lora
    from mgsr_bench.models.pairs import LoraSettings
    from mgsr_bench.pipeline import save_model_atomic
    from mgsr_bench.train import train
    from mgsr_bench.train.loop import Objective, micro_batch_loss

    student = apply_lora(tiny_model(len(tokenizer), seed=1).double(), LoraSettings(r=4, alpha=8, dropout=0.0,
                                                                                  target_modules=("q_proj", "v_proj")),
                         seed=0)
    teacher = tiny_model(len(tokenizer), seed=2, hidden=48).double().eval()
    trainable = [n for n, p in student.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    batch = collate(tokenize_records(records[:4], tokenizer), tokenizer.pad_token_id)
    method = get_method("kd")
    chunked = micro_batch_loss(Objective(method, student, teacher, len(tokenizer), tokenizer.pad_token_id,
                                         chunk_size=16), batch)
    full = micro_batch_loss(Objective(method, student, teacher, len(tokenizer), tokenizer.pad_token_id,
                                      chunk_size=0), batch)
    torch.testing.assert_close(chunked, full)
    frozen = {n: p.detach().clone() for n, p in student.named_parameters() if not p.requires_grad}
    cfg = train_config({"steps": 3, "micro_batch": 8, "lr": 1e-2, "eval_every": 3, "val_metric": "loss",
                        "val_size": 8, "mixed_precision": "no"})
    examples = tokenize_records(records[:64], tokenizer)
    train(student, teacher, tokenizer, method, examples, records[200:208], examples[:8], cfg)
    assert all(torch.equal(p, frozen[n]) for n, p in student.named_parameters() if not p.requires_grad)
    ids = batch["input_ids"][:2]
    with torch.no_grad():
        expected = student(input_ids=ids).logits
    save_model_atomic(student, tokenizer, tmp_path / "model")
    plain = load_model(tmp_path / "model", dtype=torch.float64)
    assert not any("lora" in n for n, _ in plain.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=ids).logits, expected)
    with pytest.raises(UserError, match="LoRA target module\\(s\\) c_attn not in the student"):
        apply_lora(tiny_model(len(tokenizer)), LoraSettings(target_modules=("c_attn",)), seed=0)


def test_lora_adapters_start_from_the_run_seed_and_leave_the_global_generator_alone(tokenizer):
    """The same seed gives the same adapters whatever drew from torch's generator before (the
    engine's set-up, loading), another seed others, and the generator is left as it was."""
    pytest.importorskip("peft")
    from mgsr_bench.models.lora import apply_lora
    from mgsr_bench.models.pairs import LoraSettings

    def adapters(seed: int, drawn: int) -> dict[str, torch.Tensor]:
        base = tiny_model(len(tokenizer), seed=1)  # (which seeds the generator itself)
        torch.rand(drawn)
        state = torch.get_rng_state()
        model = apply_lora(base, LoraSettings(r=4, alpha=8, dropout=0.0, target_modules=("q_proj",)), seed=seed)
        assert torch.equal(torch.get_rng_state(), state)
        return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_A" in n}

    first, after_draws, other = adapters(1, 0), adapters(1, 1000), adapters(2, 0)
    assert first and all(torch.equal(first[n], after_draws[n]) for n in first)
    assert not any(torch.equal(first[n], other[n]) for n in first)


@pytest.mark.slow
def test_a_lora_students_checkpoints_and_best_weights_hold_its_adapters_only_and_resume(tmp_path, tokenizer, records,
                                                                                       monkeypatch):
    """A checkpoint and the best-weights copy of a LoRA student hold its adapters, not the frozen
    base (which the same command loads again); a run stopped after the checkpoint of step 2 and run
    again ends with the uninterrupted run's losses and adapters; restoring puts the adapters back
    and refuses weights that leave a trainable one out."""
    pytest.importorskip("peft")
    from accelerate import Accelerator

    from mgsr_bench.config import train_config
    from mgsr_bench.data.collate import tokenize_records
    from mgsr_bench.methods import get_method
    from mgsr_bench.models.lora import apply_lora
    from mgsr_bench.models.pairs import LoraSettings
    from mgsr_bench.train import distributed, loop, train
    from mgsr_bench.train.runtime import Runtime

    def student():
        return apply_lora(tiny_model(len(tokenizer), seed=1).double(), LoraSettings(r=4, alpha=8, dropout=0.0,
                                                                                   target_modules=("q_proj", "v_proj")),
                          seed=0)

    teacher = tiny_model(len(tokenizer), seed=2, hidden=48).double().eval()
    examples = tokenize_records(records[:64], tokenizer)
    cfg = train_config({"steps": 4, "micro_batch": 8, "lr": 1e-2, "eval_every": 2, "val_metric": "loss",
                        "val_size": 8, "mixed_precision": "no", "checkpoint_every": 2})

    def run(model, folder=None):
        return train(model, teacher, tokenizer, get_method("kd"), examples, records[200:208], examples[:8], cfg,
                     checkpoint_dir=folder)

    whole_model = student()
    whole = run(whole_model)
    save = loop.Checkpoints.save

    def save_then_stop(self, step, *args):
        save(self, step, *args)
        raise KeyboardInterrupt  # as if killed right after the checkpoint

    monkeypatch.setattr(loop.Checkpoints, "save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run(student(), tmp_path)
    monkeypatch.setattr(loop.Checkpoints, "save", save)
    saved = torch.load(tmp_path / "step-0000002.pt", weights_only=True)
    best = torch.load(tmp_path / f"{saved['best']}.pt", weights_only=True)
    adapters = {n for n, p in whole_model.named_parameters() if p.requires_grad}
    assert set(saved["student"]) == set(best) == adapters
    resumed_model = student()
    resumed = run(resumed_model, tmp_path)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in whole.history]
    assert resumed.best_step == whole.best_step
    got = dict(resumed_model.named_parameters())
    assert all(torch.equal(got[n], p) for n, p in whole_model.named_parameters())

    runtime = Runtime.of(Accelerator(cpu=True))
    copy = distributed.snapshot(runtime, resumed_model)
    assert set(copy) == adapters
    with torch.no_grad():
        for name in adapters:
            got[name].add_(1.0)
    distributed.restore(runtime, resumed_model, copy)
    assert all(torch.equal(got[n], copy[n]) for n in adapters)
    with pytest.raises(RuntimeError, match="missing .*lora_"):
        distributed.restore(runtime, resumed_model, {n: copy[n] for n in sorted(adapters)[1:]})


@pytest.mark.slow
@pytest.mark.parametrize("method", ["kd", "gkd", "distillm", "mgsr"])
def test_the_benchmark_measures_every_default_method_at_a_small_shape(method):
    """``mgsr-bench bench``'s per-method run (what each of its fresh processes does), at a few tokens
    per row: every default method runs through it (MGSR's span extraction needs a real tokenizer)."""
    from mgsr_bench.benchmarks.bench import run_one

    r = run_one(method, "cpu-small", micro_batch=2, seq_len=8, steps=1, warmup=1)
    assert r["method"] == method and r["n_teacher"] > r["n_student"] > 0
    # (the step time itself is a difference of two timed runs: at this size it is noise, maybe below 0)
    assert r["train_tokens_per_s"] == pytest.approx(16 / r["seconds_per_step"])
    assert r["generation_tokens_per_s"] > 0 and r["mfu"] is None  # no peak is known for a CPU


def test_the_benchmark_refuses_trl_it_cannot_import_before_any_method_runs(monkeypatch):
    """``bench --trl`` without TRL: one line naming the extra, not a failure after minutes of the
    other methods (each runs in a fresh process, which would find TRL missing only at its turn)."""
    from mgsr_bench.benchmarks import bench

    monkeypatch.setitem(sys.modules, "trl", None)  # an import of trl now raises ImportError
    monkeypatch.setattr(bench.subprocess, "run", lambda *a, **k: pytest.fail("a method ran"))
    with pytest.raises(UserError, match=r"--trl needs TRL's GKDTrainer .*pip install -e '\.\[bench\]'"):
        bench.main(["--trl", "--methods", "kd,gkd"])
