"""Per-GPU memory estimate of a distillation run, and what to change when it does not fit.

Parameter counts are exact: both models are built from their configs on the ``meta`` device (no
weights are read). The rest follows the harness as it runs:

* student, full fine-tune: fp32 master weights, fp32 gradients and AdamW's two fp32 moments,
  16 bytes per parameter (mixed precision computes in bf16 under autocast); with LoRA the frozen
  base is held in fp32 too (the harness loads students in fp32) and only the adapter carries the
  gradients and optimizer state. DeepSpeed (``zero2``, ``zero3``) casts the module itself to the
  compute dtype and keeps its own fp32 copy of the weights beside it (the optimizer's, partitioned),
  so those 16 bytes are partitioned and the module's weights come on top;
* teacher: frozen, in the pair's dtype; replicated under ``ddp`` and ``zero2``, sharded / N under
  ``fsdp`` and ``zero3`` (``train.shard_teacher``, on by default);
* sharding: ``ddp`` none; ``zero2`` gradients and optimizer state / N; ``fsdp`` and ``zero3``
  weights, gradients and optimizer state / N;
* activations of the student's backward: per layer ``s b (c_h h + c_I I + c_s s)`` bytes, the
  tensors autograd saves in transformers' layers as measured (:data:`ACTIVATION_BYTES`, by compute
  dtype and MLP kind; Korthikanti et al. 2022's ``34 s b h`` assumes fused kernels transformers
  does not use, and its ``5 a s^2 b`` attention matrix is never kept by SDPA's fused kernels), plus
  ``11.5 a s`` per token where torch's CPU attention keeps it (attention dropout), and on the CPU
  one layer's ``(b, a, s, s)`` scores, which its kernels build under a padding mask; with
  gradient checkpointing, each layer's input ``s b h`` in the module's dtype, and one layer
  recomputed during the backward;
* the loss chunk: the method's ``chunk_tensors`` fp32 ``chunk x V`` tensors (student and teacher
  logits, softmaxes, intermediates, gradient: 3 for cross-entropy alone, 7 for a KL, 11 for a JSD), as
  ``python -m mgsr_bench.benchmarks.loss_memory`` measures them; with full logits (``loss_chunk=0``, and always
  under ``zero3``, whose freed head weights the chunked loss cannot read) the chunk is every
  response row, and the student's and teacher's whole ``(batch, seq, V)`` logits come on top;
* generation, from the method's sources (:class:`Sampling`): the sampling model's KV cache for
  the rank's whole step batch (``micro_batch x grad_accum`` rows: samples are drawn for the step
  at once) of ``s`` tokens; under ``fsdp`` and ``zero3`` the sampling models' whole weights,
  gathered for the sampling call (in the compute dtype); a method whose sources rewrite the
  student's samples (``SourceSpec.rewrite``) also keeps the sampler's logits (rows x generated
  tokens x V x 4 bytes) and, on top, either the decoder's stacking of them (a second copy) or the
  rewrite's divergence over one micro-batch of samples (seven fp32 tensors of that shape),
  whichever is larger;
* phases: the terms above fall into what the whole run holds (weights, optimizer state), what
  exists only during one stage of a training step, and what exists only while sampling or
  validating (KV cache, gathered weights, the rewrite's logits). A step's stages follow the harness: the
  student's forward keeps its activations (or checkpoints) and torch's gradients exist through the
  step; on top of them come, one after another, the teacher's no-grad forward, the loss, and with
  checkpointing the backward's recomputed layer. Sampling runs between optimizer steps, so the peak
  is the held memory plus the largest phase, not the sum;
* a fixed allowance for the CUDA context and the allocator's fragmentation (on CPU, for what
  glibc's allocator keeps of freed tensors, measured on the development machine).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mgsr_bench.errors import UserError

GIB = 1024 ** 3
STRATEGIES = ("ddp", "zero2", "fsdp", "zero3")
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
OVERHEAD_GIB = 1.5  # CUDA context, allocator fragmentation, buffers
# CPU: what glibc's allocator keeps of freed tensors (it raises its mmap threshold as large blocks
# are freed and serves later ones from its heap): on the 2-core development machine training runs'
# resident peaks exceeded their live memory (the peak with the threshold fixed) by 0.01-0.29 GiB
CPU_OVERHEAD_GIB = 0.3
#: Bytes one student layer saves for its backward pass, per token: ``hidden x h + mlp x I +
#: per_position x s`` (``h`` the hidden width, ``I`` the MLP width, ``s`` the sequence length), by
#: compute dtype (bf16 is autocast over the fp32 module, as the harness trains) and MLP kind (GPT-2's
#: GELU, OPT's ReLU, LLaMA's and Qwen's gated SiLU; each with its own dropout), with transformers'
#: SDPA attention, which keeps no ``(s, s)`` matrix. Measured by
#: ``python -m mgsr_bench.benchmarks.activation_memory``.
ACTIVATION_BYTES = {"float32": {"gelu": (48, 20, 4), "relu": (40, 4, 4), "gated": (40, 16, 4)},
                    "bfloat16": {"gelu": (31, 10.5, 0.5), "relu": (31, 2.5, 0.5), "gated": (37, 8.75, 0)}}
ACTIVATION_BYTES["float16"] = ACTIVATION_BYTES["bfloat16"]
#: ... and per head and position where attention is an explicit ``(s, s)`` matrix: torch's CPU
#: attention with dropout (GPT-2's ``attn_pdrop``) falls back to it; CUDA's fused kernels do not
MATERIALISED_ATTENTION_BYTES = 11.5


@dataclass(frozen=True)
class Sampling:
    """What a method generates while it trains."""

    student: bool = False  # on-policy samples (every step, some steps, or the student half of each batch)
    teacher: bool = False  # teacher samples
    rewrite: bool = False  # a rewrite of the student's samples: kept sampler logits, teacher passes over them

    @classmethod
    def of_method(cls, name: str) -> Sampling:
        """From a registered method's default sources."""
        from mgsr_bench.methods import get_method

        spec = get_method(name).source_spec()
        return cls(student=spec.samples_student, teacher=spec.samples_teacher, rewrite=spec.rewrite is not None)


@dataclass(frozen=True)
class Shape:
    """What the estimate needs of one model."""

    params: int
    layers: int
    hidden: int
    heads: int
    kv_dim: int  # key/value width per layer (heads_kv x head_dim)
    vocab: int
    intermediate: int = 0  # the MLP's width (0: 4 x hidden)
    mlp: str = "gelu"  # the MLP's kind, a key of ACTIVATION_BYTES: gelu, relu or gated
    attn_dropout: float = 0.0

    @property
    def mlp_width(self) -> int:
        return self.intermediate or 4 * self.hidden


def shape_of(config: Any) -> Shape:
    """A model config's shape; the parameter count from the model built on the meta device."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    params = sum(p.numel() for p in model.parameters())
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = getattr(text, "hidden_size", None) or getattr(text, "n_embd")
    layers = getattr(text, "num_hidden_layers", None) or getattr(text, "n_layer")
    heads = getattr(text, "num_attention_heads", None) or getattr(text, "n_head")
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or hidden // heads
    intermediate = next((v for k in ("intermediate_size", "ffn_dim", "n_inner") if (v := getattr(text, k, None))),
                        4 * hidden)
    if any(name.endswith(("gate_proj", "gate_up_proj")) for name, _ in model.named_modules()):
        mlp = "gated"
    else:
        act = str(getattr(text, "activation_function", None) or getattr(text, "hidden_act", "gelu"))
        mlp = "relu" if "relu" in act else "gelu"
    dropout = getattr(text, "attn_pdrop", None) or getattr(text, "attention_dropout", None) or 0.0
    return Shape(params, layers, hidden, heads, kv_heads * head_dim, text.vocab_size, intermediate, mlp,
                 float(dropout))


def lora_parameters(config: Any, target_modules: tuple[str, ...], r: int) -> int:
    """Trainable parameters of a LoRA adapter of rank ``r`` on every linear layer named in ``target_modules``."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(r * (m.in_features + m.out_features) for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and name.split(".")[-1] in target_modules)


ARCHITECTURES = Path(__file__).resolve().parents[1] / "models" / "architectures.yaml"


def model_config(name: str) -> Any:
    """A model's config without downloading weights: from a local folder, the Hub cache, the
    registry's table of published shapes (``models/architectures.yaml``), or the Hub, in that order."""
    from transformers import AutoConfig

    from mgsr_bench.config import read_yaml
    from mgsr_bench.models.loading import quiet_hub

    with quiet_hub():
        try:
            return AutoConfig.from_pretrained(name, local_files_only=True)
        except (OSError, ValueError):
            pass
        table = read_yaml(ARCHITECTURES, "architectures") or {}
        if name in table:
            fields = dict(table[name])
            return AutoConfig.for_model(fields.pop("model_type"), **fields)
        try:
            return AutoConfig.from_pretrained(name)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read the config of {name!r} ({str(e).splitlines()[0]}); go online once, "
                            "or register the pair with local paths in $MGSR_BENCH_PAIRS") from None


STRATEGY_OF_CONFIG = {"cpu": "ddp", "single_gpu": "ddp", "ddp": "ddp", "fsdp": "fsdp", "multi_node": "fsdp",
                      "zero2": "zero2", "zero3": "zero3"}


def plan_pair(pair: Any, method: str, **overrides: Any) -> Plan:
    """The plan of a registered pair trained with ``method`` (its sampling and its loss's memory),
    at the pair's own settings, any of them overridden."""
    from mgsr_bench.methods import get_method
    from mgsr_bench.suite.build import SUITES

    if pair.teacher == "tiny":
        suite = SUITES["tiny"]
        configs = [suite.teacher.config(suite.vocab_size), suite.student.config(suite.vocab_size)]
    else:
        configs = [model_config(name) for name in (pair.teacher, pair.student)]
    settings = {"gpus": pair.gpus, "gpu_mem_gib": pair.gpu_mem_gib, "strategy": STRATEGY_OF_CONFIG[pair.accelerate],
                "dtype": pair.dtype, "compute_dtype": "float32" if pair.dtype == "float32" else "bfloat16",
                "micro_batch": pair.micro_batch, "grad_accum": pair.grad_accum,
                "gradient_checkpointing": pair.gradient_checkpointing,
                "device": "cpu" if pair.accelerate == "cpu" else "cuda",
                "sampling": Sampling.of_method(method), "loss_tensors": get_method(method).chunk_tensors}
    settings.update({k: v for k, v in overrides.items() if v is not None})
    if pair.finetune == "lora":
        if settings["strategy"] in ("fsdp", "zero3"):
            raise UserError(f"{pair.name} trains a LoRA student, which the harness runs under ddp or zero2 "
                            "(its adapter is small): plan it with --strategy ddp or zero2")
        settings["lora_params"] = lora_parameters(configs[1], pair.lora.target_modules, pair.lora.r)
    return plan_memory(shape_of(configs[0]), shape_of(configs[1]), **settings)


#: The phases of a run, which never overlap: a training step's three stages (the student's forward
#: comes first and keeps its activations through all three; the teacher's no-grad forward, the
#: loss and a checkpointed layer's recomputation each free what they build before the next starts)
#: and sampling with validation, between optimizer steps.
TEACHER_PASS = "training: the teacher's forward, after the student's"
LOSS_PASS = "training: the loss"
RECOMPUTE = "training: the backward, recomputing a checkpointed layer"
SAMPLING = "while sampling and validating"
#: The held term that is no tensor: what the runtime adds (compare peaks without it)
ALLOWANCE = "runtime allowance (CUDA context / CPU allocator)"


@dataclass
class Plan:
    """The estimate, term by term (GiB per GPU), and the verdict.

    ``held`` is memory the whole run holds; each phase's terms exist only during it, and the phases
    never overlap (a training step's stages follow one another; generation and validation run
    between optimiser steps, when the gradients have been freed), so the peak is ``held`` plus the
    largest phase. Terms a whole training step holds (activations, gradients) appear in each of its
    stages.
    """

    held: dict[str, float]
    phases: dict[str, dict[str, float]]
    gpu_mem_gib: float
    advice: list[str] = field(default_factory=list)

    @property
    def terms(self) -> dict[str, float]:
        """Every term, held and per phase, by name."""
        return {**self.held, **{k: v for phase in self.phases.values() for k, v in phase.items()}}

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=lambda name: sum(self.phases[name].values()))

    @property
    def total(self) -> float:
        return sum(self.held.values()) + sum(self.phases[self.peak_phase].values())

    @property
    def fits(self) -> bool:
        return self.total <= self.gpu_mem_gib

    def render(self) -> str:
        width = max(len(k) for k in self.terms) + 2
        lines = [f"  {k:<{width}}  {v:8.2f} GiB" for k, v in self.held.items()]
        for name, terms in self.phases.items():
            counted = "counted" if name == self.peak_phase else "not counted: another phase is larger"
            lines.append(f"  {name} ({counted}): {sum(terms.values()):.2f} GiB")
            lines += [f"    {k:<{width - 2}}  {v:8.2f} GiB" for k, v in terms.items()]
        verdict = (f"fits: {self.total:.2f} of {self.gpu_mem_gib:g} GiB per GPU" if self.fits else
                   f"does NOT fit: {self.total:.2f} GiB per GPU > {self.gpu_mem_gib:g} GiB")
        return "\n".join([*lines, f"  {'total (held + the largest phase)':<{width}}  {self.total:8.2f} GiB", verdict,
                          *[f"  - {a}" for a in self.advice]]) + "\n"


@dataclass(frozen=True)
class _Layout:
    """How a strategy lays the weights out: what it shards, and the bytes per element of each copy."""

    gpus: int
    strategy: str
    weight_bytes: int  # the teacher's dtype
    compute_dtype: str
    compute_bytes: int
    module_bytes: int  # the student module's own: fp32, or DeepSpeed's compute-dtype copy
    module_dtype: str

    @classmethod
    def of(cls, gpus: int, strategy: str, dtype: str, compute_dtype: str) -> _Layout:
        cbytes = DTYPE_BYTES[compute_dtype]
        deepspeed = strategy in ("zero2", "zero3")
        module_bytes, module_dtype = (cbytes, compute_dtype) if deepspeed else (4, "float32")
        return cls(gpus, strategy, DTYPE_BYTES[dtype], compute_dtype, cbytes, module_bytes, module_dtype)

    @property
    def deepspeed(self) -> bool:
        return self.strategy in ("zero2", "zero3")

    @property
    def shard_weights(self) -> bool:
        return self.strategy in ("fsdp", "zero3")

    @property
    def shard_states(self) -> bool:
        return self.strategy != "ddp"


def plan_memory(teacher: Shape, student: Shape, *, gpus: int = 1, gpu_mem_gib: float = 80.0,
                strategy: str = "ddp", dtype: str = "bfloat16", compute_dtype: str = "bfloat16",
                micro_batch: int = 8, grad_accum: int = 1, seq_len: int = 512, gradient_checkpointing: bool = False,
                lora_params: int | None = None, loss_chunk: int = 1024, loss_tensors: float = 11.0,
                sampling: Sampling = Sampling(), gen_tokens: int | None = None, shard_teacher: bool = True,
                device: str = "cuda") -> Plan:
    """Per-GPU estimate; ``lora_params`` set means a LoRA student with that many trainable parameters;
    ``loss_tensors`` is the method's :attr:`~mgsr_bench.methods.Method.chunk_tensors`; ``gen_tokens``
    is the length of sampled responses (default: half the sequence); ``device`` ``cpu`` counts the
    attention matrices torch's CPU kernels build (CUDA's fused kernels build none) and the CPU's
    runtime allowance instead of CUDA's."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}")
    layout = _Layout.of(gpus, strategy, dtype, compute_dtype)
    teacher_shards = gpus if layout.shard_weights and shard_teacher else 1
    held, step = _held_terms(teacher, student, layout, lora_params, teacher_shards, device)
    stages = _training_stages(teacher, student, layout, step, seq_len=seq_len, micro_batch=micro_batch,
                              gradient_checkpointing=gradient_checkpointing, loss_chunk=loss_chunk,
                              loss_tensors=loss_tensors, device=device)
    sampling_terms = _sampling_terms(teacher, student, layout, sampling, rows=micro_batch * grad_accum,
                                     seq_len=seq_len, gen=gen_tokens or seq_len // 2, micro_batch=micro_batch,
                                     teacher_shards=teacher_shards)
    if sampling_terms:
        stages[SAMPLING] = sampling_terms
    plan = Plan(held, stages, gpu_mem_gib)
    if not plan.fits:
        plan.advice = _advice(plan, strategy, gradient_checkpointing, micro_batch, lora_params is not None)
    return plan


def _held_terms(teacher: Shape, student: Shape, layout: _Layout, lora_params: int | None, teacher_shards: int,
                device: str) -> tuple[dict[str, float], dict[str, float]]:
    """What the whole run holds, and what a training step holds through its stages (torch's gradients)."""
    n, module_bytes, deepspeed = layout.gpus, layout.module_bytes, layout.deepspeed
    held: dict[str, float] = {}
    step: dict[str, float] = {}
    if lora_params is None:
        held[f"student weights ({layout.module_dtype})"] = \
            module_bytes * student.params / (n if layout.shard_weights else 1) / GIB
        if deepspeed:
            held["student fp32 master weights (DeepSpeed's)"] = 4 * student.params / n / GIB
        # the harness frees torch's gradients after every optimiser step; DeepSpeed keeps its partitions
        (held if deepspeed else step)["student gradients (fp32)"] = \
            4 * student.params / (n if layout.shard_states else 1) / GIB
        held["AdamW state (fp32 x 2)"] = 8 * student.params / (n if layout.shard_states else 1) / GIB
    else:
        held[f"student weights (frozen, {layout.module_dtype})"] = module_bytes * student.params / GIB
        held["LoRA weights + grads + AdamW"] = 16 * lora_params / GIB
    if layout.strategy == "ddp" and n > 1:  # accelerate's DDP keeps its all-reduce buckets beside .grad (no bucket views)
        held["DDP gradient buckets (fp32)"] = 4 * (student.params if lora_params is None else lora_params) / GIB
    held[f"teacher weights (frozen, {'sharded' if teacher_shards > 1 else 'replicated'})"] = \
        layout.weight_bytes * teacher.params / teacher_shards / GIB
    held[ALLOWANCE] = CPU_OVERHEAD_GIB if device == "cpu" else OVERHEAD_GIB
    return held, step


def _training_stages(teacher: Shape, student: Shape, layout: _Layout, step: dict[str, float], *, seq_len: int,
                     micro_batch: int, gradient_checkpointing: bool, loss_chunk: int, loss_tensors: float,
                     device: str) -> dict[str, dict[str, float]]:
    """A training step's stages: the teacher's forward, the loss, and a checkpointed layer's recomputation."""
    s, b, h, cbytes = seq_len, micro_batch, student.hidden, layout.compute_bytes
    hidden_bytes, mlp_bytes, position_bytes = ACTIVATION_BYTES[layout.compute_dtype][student.mlp]
    per_token = hidden_bytes * h + mlp_bytes * student.mlp_width + position_bytes * s
    if device == "cpu" and student.attn_dropout > 0:
        per_token += MATERIALISED_ATTENTION_BYTES * student.heads * s
    per_layer = s * b * per_token / GIB

    def scores(model: Shape) -> dict[str, float]:
        """torch's CPU attention under a padding mask builds one layer's (b, heads, s, s) scores at a time."""
        return {"attention scores, one layer (CPU kernels)": b * model.heads * s * s * cbytes / GIB} \
            if device == "cpu" else {}

    stages: dict[str, dict[str, float]] = {}
    step = dict(step)
    if gradient_checkpointing:
        # each layer's saved input is the residual stream, in the module's dtype (fp32 under autocast)
        step["student activations (checkpointed: each layer's input)"] = \
            student.layers * s * b * h * layout.module_bytes / GIB
    else:
        step["student activations"] = student.layers * per_layer
    stages[TEACHER_PASS] = {**step, "teacher forward (one layer, no grad)":
                            s * b * teacher.hidden * 20 * (cbytes / 2) / GIB, **scores(teacher)}
    vocab = max(student.vocab, teacher.vocab)
    responses = s * b // 2  # response tokens are at most half of the sequence in the protocol (256 of 512)
    loss = stages[LOSS_PASS] = dict(step)
    if loss_chunk == 0 or layout.strategy == "zero3":  # the harness's full-logits path
        # accelerate hands DDP's and FSDP's outputs back in fp32 (convert_outputs_to_fp32); DeepSpeed's as computed
        loss["full logits (student + teacher)"] = b * s * vocab * ((cbytes if layout.deepspeed else 4) + cbytes) / GIB
        loss[f"loss on all response rows (fp32 x {loss_tensors:g})"] = loss_tensors * responses * vocab * 4 / GIB
    else:
        loss[f"loss chunk (fp32 x {loss_tensors:g})"] = loss_tensors * min(loss_chunk, responses) * vocab * 4 / GIB
        # the chunk loop's own gradient of the output head (fp32, until the backward takes it) and
        # autocast's cached copy of the head in the compute dtype
        loss["loss chunk: head gradient + cast head"] = \
            student.vocab * student.hidden * (4 + (cbytes if cbytes < 4 else 0)) / GIB
    if gradient_checkpointing:
        stages[RECOMPUTE] = {**step, "one layer recomputed (its saved activations)": per_layer, **scores(student)}
    return stages


def _sampling_terms(teacher: Shape, student: Shape, layout: _Layout, sampling: Sampling, *, rows: int,
                    seq_len: int, gen: int, micro_batch: int, teacher_shards: int) -> dict[str, float]:
    """What exists only while sampling and validating (``rows`` per process, ``gen`` sampled tokens)."""
    s, cbytes, wbytes = seq_len, layout.compute_bytes, layout.weight_bytes
    terms: dict[str, float] = {}
    # each sampler with its cache's bytes per element: a student kept in fp32 under autocast caches
    # rotary models' keys in fp32 (cos/sin follow the residual stream) and values in the compute
    # dtype, planned so for every architecture
    samplers = [(m, kv) for m, used, kv in ((student, sampling.student, (layout.module_bytes + cbytes) / 2),
                                            (teacher, sampling.teacher, cbytes)) if used]
    if samplers:  # one sampling model at a time: the larger cache counts
        terms["generation KV cache"] = max(2 * m.layers * rows * s * m.kv_dim * kv for m, kv in samplers) / GIB
    if layout.shard_weights:  # every validation gathers the whole student (so does sampling), and a sampling teacher
        gathered = student.params * cbytes
        if teacher_shards > 1 and (sampling.teacher or sampling.rewrite):
            gathered += teacher.params * wbytes
        terms["weights gathered (validation, sampling)"] = gathered / GIB
    if sampling.rewrite:
        kept = rows * gen * student.vocab * 4
        terms["rewrite: kept sampler logits (fp32)"] = kept / GIB
        # on top of them: the decoder stacking them row by row (a second copy, briefly), or the
        # rewrite's divergence over one micro-batch of samples (their logits, the teacher's, and
        # five fp32 intermediates of the same shape), whichever is larger
        terms["rewrite: stacking, or its divergence (fp32 x 7)"] = \
            max(kept, 7 * min(micro_batch, rows) * gen * max(student.vocab, teacher.vocab) * 4) / GIB
    return terms


def _advice(plan: Plan, strategy: str, checkpointing: bool, micro_batch: int, lora: bool) -> list[str]:
    biggest = max(plan.terms, key=plan.terms.get)
    out = [f"largest term: {biggest} ({plan.terms[biggest]:.1f} GiB)"]
    if not checkpointing:
        out.append("turn on gradient checkpointing (train.gradient_checkpointing: true)")
    if micro_batch > 1:
        out.append(f"lower train.micro_batch (now {micro_batch}) and raise train.grad_accum to keep the global batch")
    if not lora:  # a LoRA student runs under ddp or zero2 only, where more GPUs shard almost nothing
        if strategy in ("ddp", "zero2"):
            out.append("shard the student's weights too: --strategy fsdp or zero3")
        out.append("train a LoRA adapter instead of the full student (finetune: lora)")
        out.append("add GPUs (--gpus) when sharding (fsdp and zero3 shard the teacher too)")
    return out
