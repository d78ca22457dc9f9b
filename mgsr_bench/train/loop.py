"""The training loop, shared by every method; read it top to bottom.

What it guarantees, identically for every method:

* the teacher is frozen, in eval mode, and run under ``no_grad``;
* the loss covers response tokens only, the mask taken from the shifted labels (so the response's
  own EOS stays in the loss even when pad == eos);
* reduction is the token mean over the *global* batch: each micro-batch contributes
  ``sum of its token losses / tokens in the global batch``, so splitting a batch into
  micro-batches with gradient accumulation (or across DDP processes) gives the same loss and
  gradients as one big batch;
* AdamW, cosine schedule with linear warm-up, gradient clipping, mixed precision where the device
  supports it (via accelerate), periodic validation, the best weights by validation score, and
  (with ``patience``) a stop once validation has stopped improving;
* all of the above under every engine accelerate drives (DDP, FSDP2, DeepSpeed ZeRO-2/3): the few
  steps an engine changes (teacher placement, gathering weights for sampling, DeepSpeed's step,
  getting the weights out) are calls into :mod:`mgsr_bench.train.distributed`, given the run's
  :class:`~mgsr_bench.train.runtime.Runtime`.

:func:`train` is set-up (:class:`Run`), then per step: train (:meth:`Run.step`), validate
(:meth:`Run.validate`), checkpoint (:meth:`Run.checkpoint`). What carries from step to step is one
:class:`RunState`; it and every other stateful part (scheduler, a method's sub-network, the batch
source, the random streams) give their own ``state_dict()`` to the checkpoint.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterator, NoReturn

import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase, get_cosine_schedule_with_warmup

from mgsr_bench.config import TrainConfig, config_hash
from mgsr_bench.data.collate import Example, collate, token_batch, token_digest
from mgsr_bench.eval.generate import EvalSettings, generate
from mgsr_bench.errors import UserError
from mgsr_bench.eval.metrics import corpus_scores
from mgsr_bench.losses.chunked import chunked_linear_loss
from mgsr_bench.losses.divergences import cross_entropy
from mgsr_bench.methods import Method
from mgsr_bench.methods.base import Validation
from mgsr_bench.models.heads import last_hidden_states, output_head
from mgsr_bench.models.loading import check_positions, count_parameters, weight_shapes
from mgsr_bench.sampling import BatchSource
from mgsr_bench.signals import launched_processes
from mgsr_bench.train import distributed
from mgsr_bench.train.checkpoint import Checkpoints, rng_state, set_rng_state
from mgsr_bench.train.cost import ForwardPositions, device_name, training_cost
from mgsr_bench.train.runtime import Runtime
from mgsr_bench.teacher_cache import CacheReading
from mgsr_bench.train.tracking import Tracking, hyperparameters, step_metrics


@dataclass
class TrainResult:
    """What a training run reports: per-step history, the best validation point and timing."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best_step: int = 0
    best_score: float = -math.inf
    val_examples: int = 0  # validation records scored: val_size, or the whole set when it is smaller
    steps_run: int = 0  # the last step trained: cfg.steps, or fewer when patience stopped the run
    stopped_early: bool = False  # whether patience stopped the run before cfg.steps
    wall_time_s: float = 0.0
    seconds_per_step: float = 0.0  # wall_time_s / steps_run
    method_state: dict[str, Any] | None = None  # a loss sub-network's state (at the best step), if any
    cost: dict[str, Any] = field(default_factory=dict)  # :func:`mgsr_bench.train.cost.training_cost`
    # the trained student as an ordinary model: the one passed in, or a gathered copy of a sharded
    # one (None on processes other than the main one when the weights were sharded)
    model: PreTrainedModel | None = None


@dataclass
class Patience:
    """Early stopping: the run stops once ``patience`` validations in a row bring no new best score
    (0: never). The count is part of the run's state, so a checkpoint saves it."""

    patience: int
    stale: int = 0  # validations since the last new best

    def stops(self, improved: bool) -> bool:
        """Count one validation; whether the run stops after it."""
        self.stale = 0 if improved else self.stale + 1
        return 0 < self.patience <= self.stale


@dataclass
class RunState:
    """What a run carries from one step to the next, the same on every process.

    ``best_score`` is higher-is-better (minus the loss, or ROUGE-L). ``best_weights`` are written
    beside each checkpoint (once per best step) rather than in its :meth:`state_dict`."""

    patience: Patience
    step: int = 0  # the last step trained
    history: list[dict[str, Any]] = field(default_factory=list)
    best_score: float = -math.inf
    best_step: int = 0
    best_weights: dict[str, torch.Tensor] | None = None
    method_state: dict[str, Any] | None = None  # a method's sub-network at the best step
    stopped_early: bool = False
    elapsed_before: float = 0.0  # seconds trained before this process started (a resumed run's)
    started: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "history": self.history, "best_score": self.best_score,
                "best_step": self.best_step, "stale_validations": self.patience.stale,
                "method_state": self.method_state, "elapsed": self.elapsed()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.history = state["step"], state["history"]
        self.best_score, self.best_step = state["best_score"], state["best_step"]
        self.patience.stale, self.method_state = state["stale_validations"], state["method_state"]
        self.elapsed_before = state["elapsed"]

    def judge(self, step: int, score: float, last_step: int) -> bool:
        """Count a validation of ``score`` at ``step``; whether it is a new best (then the caller
        keeps the weights). Patience may stop the run here, before ``last_step``."""
        improved = score > self.best_score  # the same on every process: so is the stop
        if self.patience.stops(improved) and step < last_step:
            self.stopped_early = True
        if improved:
            self.best_score, self.best_step = score, step
        return improved

    def add(self, record: dict[str, Any]) -> None:
        """Record the step just trained."""
        self.history.append(record)
        self.step = record["step"]


def resolve_mixed_precision(setting: str) -> str:
    """``auto`` means bf16 on a GPU that supports it and full precision elsewhere (CPU included)."""
    if setting != "auto":
        return setting
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def make_accelerator(cfg: TrainConfig, tracking: Tracking | None = None) -> Accelerator:
    """This process's ``Accelerator`` for a run with ``cfg``: the engine ``accelerate launch`` chose,
    and, for several processes on a machine without GPUs, gloo on the CPU (accelerate only picks it
    when told "cpu"). :func:`train` builds it unless given one: a caller builds it first where the
    engine must be up before the models load (ZeRO-3's partitioned loading). ``tracking`` names the
    trackers it reports to (:mod:`mgsr_bench.train.tracking`)."""
    multi_cpu = not torch.cuda.is_available() and launched_processes() > 1
    distributed.check_fsdp_accelerate()  # before the constructor, in which old versions fail
    trackers = {"log_with": list(tracking.report_to), "project_dir": str(tracking.folder)} if tracking else {}
    return Accelerator(mixed_precision=resolve_mixed_precision(cfg.mixed_precision), cpu=multi_cpu,
                       kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=cfg.process_timeout_s))],
                       **trackers)


def global_batches(examples: list[Example], batch_size: int, seed: int) -> Iterator[list[Example]]:
    """Endless shuffled global batches; every process draws the same sequence from the same seed."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(examples), generator=gen).tolist()
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield [examples[i] for i in order[start: start + batch_size]]


@dataclass(frozen=True)
class Objective:
    """What a micro-batch's loss needs besides the batch: the method, the models (as the engine
    wrapped them), the shared tokenizer's vocabulary size and pad id, the micro-batch size, and
    the loss's chunk of positions (0: full logits)."""

    method: Method
    student: torch.nn.Module
    teacher: torch.nn.Module | None
    vocab_size: int
    pad_id: int
    micro_batch: int = 8
    chunk_size: int = 1024
    teacher_cache: CacheReading | None = None  # the examples carry cached teacher rows: no teacher forward


def micro_batch_loss(objective: Objective, batch: dict[str, torch.Tensor],
                     totals: dict[str, int] | None = None) -> torch.Tensor:
    """Sum of the method's per-token losses over the response tokens of one micro-batch.

    Only response positions (``shifted labels != IGNORE``) are scored, and logits are cut to the
    shared tokenizer's ``vocab_size`` (models may pad their embedding matrices differently). With
    ``chunk_size > 0`` the heads are applied chunk by chunk (:func:`chunked_linear_loss`), so no
    full ``(tokens, vocab)`` logits tensor is ever held (also under DDP or FSDP: the hidden states
    come from the wrapped model's own forward); ``0`` computes full logits (the naive path, also
    used for models whose head is not a plain bias-free linear layer). ``totals`` are the global
    batch's (see :func:`global_totals`).
    """
    method, student, teacher, vocab_size = objective.method, objective.student, objective.teacher, objective.vocab_size
    mask, tokens = token_batch(batch, totals)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    cached = objective.teacher_cache is not None and tokens.teacher_topk is not None
    needs_teacher = method.needs_teacher and not cached
    token_loss = objective.teacher_cache.token_loss(method) if cached else method.token_losses
    heads = (output_head(student), output_head(teacher) if needs_teacher else None)
    if objective.chunk_size and heads[0] is not None and (heads[1] is not None or not needs_teacher):
        hidden = last_hidden_states(student, inputs)[mask]
        teacher_hidden = teacher_weight = None
        if needs_teacher:
            with torch.no_grad():
                teacher_hidden = last_hidden_states(teacher, inputs)[mask]
            teacher_weight = heads[1].weight[:vocab_size]
        module = method.module()
        params = [p for p in module.parameters() if p.requires_grad] if module is not None else []
        return chunked_linear_loss(hidden, heads[0].weight[:vocab_size], teacher_hidden, teacher_weight,
                                   tokens, token_loss, objective.chunk_size, params)
    student_logits = student(**inputs).logits[mask][:, :vocab_size]
    teacher_logits = None
    if needs_teacher:
        with torch.no_grad():
            teacher_logits = teacher(**inputs).logits[mask][:, :vocab_size]
    return token_loss(student_logits, teacher_logits, tokens).sum()


def backward_global_batch(objective: Objective, examples: list[Example], totals: dict[str, int],
                          runtime: Runtime) -> float:
    """Accumulate the gradients of one optimiser step; returns this process's share of the loss.

    ``examples`` is this process's share of the global batch and ``totals["tokens"]`` the number of
    response tokens in the *whole* global batch. Each micro-batch's backward pass uses
    ``token-loss sum * world / tokens``: summed over micro-batches and averaged by DDP over
    processes, that is exactly the token mean over the global batch, however it is split.
    """
    world, n_tokens, size = runtime.world, totals["tokens"], objective.micro_batch
    micro = [examples[i: i + size] for i in range(0, len(examples), size)]
    losses = []
    for i, chunk in enumerate(micro):
        batch = {k: v.to(runtime.device) for k, v in collate(chunk, objective.pad_id).items()}
        last = i == len(micro) - 1
        with distributed.local_accumulation(runtime, objective.student, last):
            with runtime.accelerator.autocast():  # the forward under autocast, the backward outside it
                loss = micro_batch_loss(objective, batch, totals) * world / n_tokens
            distributed.backward(runtime, loss, last)
        losses.append(loss.detach())
    return sum(part.item() for part in losses) / world  # summed in Python's float64, whatever the model's dtype


def response_tokens(examples: list[Example]) -> int:
    """Tokens that carry a loss (response tokens including EOS) in a list of examples.

    With an empty prompt nothing predicts the first response token, so it carries no loss.
    """
    return sum(len(e.response_ids) - (0 if e.prompt_ids else 1) for e in examples)


def global_totals(method: Method, examples: list[Example], runtime: Runtime) -> dict[str, int]:
    """The response tokens (``"tokens"``) and the method's batch counts of the whole global batch,
    ``examples`` being this process's share."""
    totals = {**method.batch_counts(examples), "tokens": response_tokens(examples)}
    if runtime.world > 1:
        summed = runtime.accelerator.reduce(torch.tensor(list(totals.values()), device=runtime.device), "sum")
        totals = dict(zip(totals, (int(c) for c in summed.tolist())))
    return totals


class _NextTokenLoss(Method):
    """Cross-entropy of the response tokens: the validation loss, the same whatever the method trained."""

    name = "validation"
    needs_teacher = False

    def token_losses(self, student_logits, teacher_logits, tokens) -> torch.Tensor:
        return cross_entropy(student_logits, tokens.targets)


@torch.no_grad()
def validation_loss(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, valid_examples: list[Example],
                    cfg: TrainConfig, device: torch.device) -> float:
    """Token-mean cross-entropy on the validation examples (chunked like the training loss)."""
    model.eval()
    objective = Objective(_NextTokenLoss(), model, None, len(tokenizer), tokenizer.pad_token_id,
                          cfg.micro_batch, cfg.loss_chunk_size)
    total, count = 0.0, 0
    for start in range(0, len(valid_examples), cfg.micro_batch):
        chunk = valid_examples[start: start + cfg.micro_batch]
        batch = {k: v.to(device) for k, v in collate(chunk, tokenizer.pad_token_id).items()}
        total += micro_batch_loss(objective, batch).item()
        count += response_tokens(chunk)
    model.train()
    return total / count


@torch.no_grad()
def validation_metric(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, valid: list[dict[str, Any]],
                      valid_examples: list[Example], cfg: TrainConfig, device: torch.device) -> float:
    """``cfg.val_metric`` on the validation set: greedy ROUGE-L on the records, or the validation loss."""
    if cfg.val_metric == "rougeL":
        greedy = EvalSettings(greedy=True, max_new_tokens=cfg.val_max_new_tokens, no_repeat_ngram_size=0)
        preds = generate(model, tokenizer, [r["prompt"] for r in valid], greedy)
        return corpus_scores(preds, [r["output"] for r in valid])["rougeL"]
    return validation_loss(model, tokenizer, valid_examples, cfg, device)


def higher_is_better(metric: str, value: float) -> float:
    """A validation value as a score to maximise: ROUGE-L as it is, a loss negated."""
    return -value if metric == "loss" else value


def _loss_now(record: dict[str, Any], model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
              valid_examples: list[Example], cfg: TrainConfig, device: torch.device) -> Callable[[], float]:
    """The validation loss for a method's validate hook: the one just recorded, or computed on demand."""
    if "val_loss" in record:
        return lambda: record["val_loss"]
    return lambda: validation_loss(model, tokenizer, valid_examples, cfg, device)


def _check_lengths(student: PreTrainedModel, teacher: PreTrainedModel | None, uses_teacher: bool,
                   samples: bool, train_examples: list[Example], valid_examples: list[Example], cfg: TrainConfig,
                   world: int) -> None:
    """Refuse, before any compute, examples (or, where the run ``samples``, prompts plus samples)
    past a model's positions, and too few examples for one global batch."""
    examples = [*train_examples, *valid_examples]
    longest = max((len(e.prompt_ids) + len(e.response_ids) for e in examples), default=0)
    sampled = max((len(e.prompt_ids) for e in train_examples), default=0) + cfg.gen_max_new_tokens
    for model, role in ((student, "student"), *(((teacher, "teacher"),) if uses_teacher else ())):
        check_positions(model, role, longest, "the longest training or validation example",
                        "use a model with more positions, or shorter examples")
        if samples:
            check_positions(model, role, sampled, "the longest prompt plus train.gen_max_new_tokens",
                            "lower train.gen_max_new_tokens")
    if len(train_examples) < cfg.global_batch * world:
        raise UserError(f"{len(train_examples)} training examples cannot fill one global batch of "
                        f"{cfg.global_batch * world} (micro_batch x grad_accum x processes); lower train.micro_batch")


def _run_hash(student: PreTrainedModel, teacher: PreTrainedModel | None, tokenizer: PreTrainedTokenizerBase,
              method: Method, train_examples: list[Example], cfg: TrainConfig, world: int,
              teacher_cache: CacheReading | None) -> str:
    """What a checkpoint must have been written by to be resumed, and what every process must agree on:
    the settings (not how often to checkpoint or wait), the method, the data, the models' shapes and
    the teacher cache read, if any."""
    settings = {k: v for k, v in dataclasses.asdict(cfg).items()
                if k not in ("checkpoint_every", "keep_checkpoints", "process_timeout_s")}
    cache = {"teacher_cache": dataclasses.asdict(teacher_cache)} if teacher_cache is not None else {}
    return config_hash({"train": settings, "method": method.name, "options": method.options(),
                        "vocab": len(tokenizer), "processes": world, "data": token_digest(train_examples),
                        "student": weight_shapes(student),
                        "teacher": count_parameters(teacher) if teacher is not None else 0, **cache})


def _enable_checkpointing(student: PreTrainedModel) -> None:
    """Activation checkpointing, under its recent name in transformers (the old name is deprecated)."""
    if hasattr(student, "activation_checkpointing_enable"):
        student.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


class Run:
    """One training run's parts, built once, in the order the engines need (the student prepared
    before the teacher, a method's sub-network between them), and the state they carry."""

    def __init__(self, runtime: Runtime, cfg: TrainConfig, *, student: PreTrainedModel,
                 teacher: PreTrainedModel | None, tokenizer: PreTrainedTokenizerBase, method: Method,
                 train_examples: list[Example], valid: list[dict[str, Any]], valid_examples: list[Example],
                 checkpoint_dir: Path | None, desc: str, teacher_cache: CacheReading | None = None) -> None:
        runtime.check_student(student)
        if cfg.gradient_checkpointing:
            _enable_checkpointing(student)
        spec = method.source_spec()
        # for the loss (unless a cache stands in for it on every batch: no samples), samples or a rewrite
        uses_teacher = (method.needs_teacher and (teacher_cache is None or spec.samples)) or spec.uses_teacher
        _check_lengths(student, teacher, uses_teacher, spec.samples, train_examples, valid_examples, cfg,
                       runtime.world)
        run_hash = _run_hash(student, teacher, tokenizer, method, train_examples, cfg, runtime.world, teacher_cache)
        distributed.check_processes_agree(runtime.accelerator, run_hash, teacher=teacher, student=student)
        self.runtime, self.tokenizer, self.method, self.cfg, self.desc = runtime, tokenizer, method, cfg, desc
        trainable = (p for p in student.parameters() if p.requires_grad)  # a LoRA student: the adapters only
        optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
        # Stepped by hand once per optimiser step; accelerate's prepared scheduler would step once
        # per process and run the schedule `world` times too fast.
        self.scheduler = get_cosine_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * cfg.steps), cfg.steps)
        distributed.configure_deepspeed(runtime.accelerator, cfg.micro_batch, cfg.grad_accum, cfg.max_grad_norm)
        if distributed.rank0_loading(runtime.accelerator):  # FSDP's preparation broadcasts the parameters themselves
            distributed.broadcast_from_main(student, runtime.accelerator, parameters=False)
        self.student, self.optimizer = runtime.accelerator.prepare(student, optimizer)
        self.model = runtime.accelerator.unwrap_model(self.student)  # what generation, validation and saving use
        self.checkpoints = (Checkpoints(checkpoint_dir, run_hash, runtime, self.model, self.optimizer,
                                        cfg.keep_checkpoints, cfg.checkpoint_every)
                            if checkpoint_dir is not None else None)
        self.extra = method.extra_trainable(runtime.device)  # a loss's own sub-network, with its optimiser
        if uses_teacher:
            if teacher is None:
                raise ValueError(f"method {method.name!r} needs a teacher")
            teacher = distributed.prepare_teacher(teacher, runtime, cfg.shard_teacher)
        self.teacher = teacher
        # what each step's forward passes process (mgsr_bench.train.cost); not under ZeRO-3 when the run
        # samples, whose sampling runs on gathered copies of the models that the counters do not see
        self.counting = not (runtime.engine == "zero3" and spec.samples)
        self.positions = (ForwardPositions(self.model if self.counting else None),
                          ForwardPositions(teacher if uses_teacher and self.counting else None))
        # ZeRO-3 frees each module's weights after its forward: the loss then needs the heads' own
        # forward (full logits) instead of reading their weights for the chunked loss.
        self.objective = Objective(method, self.student, teacher, len(tokenizer), tokenizer.pad_token_id,
                                   cfg.micro_batch, 0 if runtime.engine == "zero3" else cfg.loss_chunk_size,
                                   teacher_cache)
        # Sampling gathers the sharded models' weights once per call (no collective while decoding).
        self.source = (BatchSource(spec, tokenizer, cfg.gen_max_new_tokens, cfg.gen_temperature, cfg.seed,
                                   cfg.micro_batch, gather=distributed.gathered) if spec.samples else None)
        self.batches = global_batches(train_examples, cfg.global_batch * runtime.world, cfg.seed)
        self.valid, self.valid_examples = valid[: cfg.val_size], valid_examples[: cfg.val_size]
        self.state = RunState(Patience(cfg.patience))

    def resume_or_begin(self) -> None:
        """Continue from the newest checkpoint (weights and optimiser loaded in place), or, in a
        fresh run, show the method the student before training."""
        loaded = self.checkpoints.load() if self.checkpoints is not None else None
        if loaded is None:
            self.method.validate(Validation(0, self.source, self._loss_before_training))
            return
        saved, own = loaded
        self.scheduler.load_state_dict(saved["scheduler"])
        if self.extra is not None:
            self.extra.load_state_dict({"module": saved["module"], "optimizer": saved["module_optimizer"]})
        if self.source is not None and own["source"] is not None:
            self.source.load_state_dict(own["source"])
        scaler = self.runtime.accelerator.scaler
        if scaler is not None and saved.get("scaler") is not None:  # fp16's loss scale
            scaler.load_state_dict(saved["scaler"])
        self.state.load_state_dict(saved)
        self.state.best_weights = saved["best_state"]
        for _ in range(self.state.step):  # the data order is a function of the seed: replay the draws
            next(self.batches)
        set_rng_state(own["rng"])

    def _loss_before_training(self) -> float:
        with distributed.gathered(self.model) as (whole,):
            return validation_loss(whole, self.tokenizer, self.valid_examples, self.cfg, self.runtime.device)

    def step(self, step: int) -> dict[str, Any]:
        """Train ``step`` on this process's share of the global batch; returns its history record."""
        runtime, cfg, method = self.runtime, self.cfg, self.method
        for counter in self.positions:  # the validation before this step is not its cost
            counter.take()
        mine = next(self.batches)[runtime.rank::runtime.world]
        origin = "ground_truth"
        if self.source is not None:  # every process draws the same source; each samples its own share
            mine, origin = self.source(mine, self.model, self.teacher, step, cfg.steps)
        mine = method.annotate(mine, self.tokenizer)
        totals = global_totals(method, mine, runtime)
        loss = backward_global_batch(self.objective, mine, totals, runtime)
        if runtime.world > 1:  # summed in float64, as each process's own share was
            share = torch.tensor(loss, dtype=torch.float64, device=runtime.device)
            loss = runtime.accelerator.reduce(share, "sum").item()
        if not math.isfinite(loss):
            self._fail(step, loss, mine)
        grad_norm = distributed.optimizer_step(runtime, self.student, self.optimizer, cfg.max_grad_norm)
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.extra is not None:  # not wrapped by any engine: its gradients are averaged here
            self.extra.step((lambda grad: runtime.accelerator.reduce(grad, "mean")) if runtime.world > 1 else None)
        return {"step": step, "loss": loss, "lr": self.scheduler.get_last_lr()[0], "grad_norm": grad_norm,
                "source": origin, "tokens": totals["tokens"], **(self._step_counts() if self.counting else {}),
                **(self.source.step_stats() if self.source is not None else {}), **method.step_stats()}

    def stop_counting(self) -> None:
        for counter in self.positions:
            counter.close()

    def _step_counts(self) -> dict[str, int]:
        """The step's forward positions and sampled tokens over all processes (:mod:`mgsr_bench.train.cost`)."""
        (student, sampling), (teacher_grad, teacher) = (counter.take() for counter in self.positions)
        counts = {"student_tokens": student, "student_sampling_tokens": sampling,
                  "teacher_tokens": teacher + teacher_grad,
                  "generated_tokens": self.source.take_generated() if self.source is not None else 0}
        if self.runtime.world > 1:
            summed = self.runtime.accelerator.reduce(torch.tensor(list(counts.values()), device=self.runtime.device),
                                                     "sum")
            counts = dict(zip(counts, (int(c) for c in summed.tolist())))
        return counts

    def _fail(self, step: int, loss: float, batch: list[Example]) -> NoReturn:
        """Stop on a non-finite loss; with checkpoints, save the state before ``step`` (the weights
        are still those: every process sees the loss) and the batch."""
        where = ""
        if self.checkpoints is not None:
            path = self.checkpoints.save_failure(step, self.run_state(), self.process_state(),
                                                 self.state.best_weights, batch)
            where = f"; the state before it and its batch are in {path}"
        raise FloatingPointError(f"non-finite loss {loss} at step {step} ({self.desc}){where}")

    def validates(self, step: int) -> bool:
        return step % self.cfg.eval_every == 0 or step == self.cfg.steps

    def validate(self, step: int, record: dict[str, Any]) -> float:
        """Score the student (the main process's score for all: whether it is a new best decides
        collectives), let the method see it, keep the best weights; returns the score."""
        cfg, device = self.cfg, self.runtime.device
        with distributed.gathered(self.model) as (whole,):  # every process validates the same examples
            value = distributed.from_main(validation_metric(whole, self.tokenizer, self.valid, self.valid_examples,
                                                            cfg, device))
            record[f"val_{cfg.val_metric}"] = value
            loss = _loss_now(record, whole, self.tokenizer, self.valid_examples, cfg, device)
            record.update(self.method.validate(Validation(step, self.source, loss)))
        score = higher_is_better(cfg.val_metric, value)
        improved = self.state.judge(step, score, cfg.steps)
        if self.state.stopped_early:
            record["stopped_early"] = True
        if improved:
            self.state.best_weights = distributed.snapshot(self.runtime, self.model)
            if self.extra is not None:  # the sub-network saved with the student is the one from the same step
                self.state.method_state = copy.deepcopy(self.extra.state_dict())
        return score

    def checkpoints_after(self, step: int) -> bool:
        """Whether a checkpoint follows ``step`` (never the last: a re-run has nothing left to do)."""
        every = self.cfg.checkpoint_every
        return self.checkpoints is not None and every > 0 and step % every == 0 and step < self.cfg.steps

    def checkpoint(self, step: int) -> None:
        self.checkpoints.save(step, self.run_state(), self.process_state(), self.state.best_weights)

    def run_state(self) -> dict[str, Any]:
        """The run's state, the same on every process (the checkpoint adds the weights and optimiser)."""
        extra = self.extra.state_dict() if self.extra is not None else {"module": None, "optimizer": None}
        scaler = self.runtime.accelerator.scaler
        return {**self.state.state_dict(), "scheduler": self.scheduler.state_dict(), "module": extra["module"],
                "module_optimizer": extra["optimizer"], "scaler": scaler.state_dict() if scaler is not None else None}

    def process_state(self) -> dict[str, Any]:
        """What differs between processes: the random streams, and the samples each one drew."""
        return {"rng": rng_state(), "source": self.source.state_dict() if self.source is not None else None}

    def finish(self) -> TrainResult:
        """The result, the student holding the best validated weights."""
        state = self.state
        wall = state.elapsed()
        method_state = state.method_state
        if self.extra is not None and method_state is None:
            method_state = self.extra.state_dict()
        if state.best_step:
            distributed.restore(self.runtime, self.model, state.best_weights)
        result = TrainResult(history=state.history, best_step=state.best_step, best_score=state.best_score,
                             val_examples=len(self.valid), steps_run=state.step, stopped_early=state.stopped_early,
                             wall_time_s=wall, seconds_per_step=wall / state.step, method_state=method_state,
                             cost=training_cost(state.history, wall, self.runtime.world,
                                                device_name(self.runtime.device)),
                             model=distributed.plain_model(self.runtime, self.model))
        self.model.eval()
        return result


def train(student: PreTrainedModel, teacher: PreTrainedModel | None, tokenizer: PreTrainedTokenizerBase,
          method: Method, train_examples: list[Example], valid: list[dict[str, Any]],
          valid_examples: list[Example], cfg: TrainConfig, desc: str = "train",
          checkpoint_dir: Path | None = None, accelerator: Accelerator | None = None,
          teacher_cache: CacheReading | None = None, tracking: Tracking | None = None) -> TrainResult:
    """Train ``student`` with ``method``; on return it holds the best validated weights, and
    ``result.model`` is the trained student as an ordinary model (the same object, unless the engine
    sharded its weights: then a gathered copy on the main process).

    With ``checkpoint_dir``, a checkpoint is written every ``cfg.checkpoint_every`` steps and the run
    continues from the newest one found there (written by the same configuration), so a killed run
    re-started with the same arguments ends exactly as an uninterrupted one, under every engine
    (each process resumes with its own random state; sharded engines write their shards, see
    :mod:`mgsr_bench.train.checkpoint`). A non-finite loss stops the run with the step named and,
    with ``checkpoint_dir``, the weights and optimiser from before that step and the offending
    batch saved. With ``teacher_cache`` the training examples carry the teacher's cached rows and the
    loss reads them instead of running the teacher (:mod:`mgsr_bench.teacher_cache`). With
    ``tracking`` every step's record is also logged to its trackers (an ``accelerator`` the caller
    built must have been made with the same ``tracking``).
    """
    runtime = Runtime.of(accelerator or make_accelerator(cfg, tracking))
    if tracking is not None:
        runtime.accelerator.init_trackers(tracking.run_name, config=hyperparameters(tracking.config))
    runtime.seed(cfg.seed, cfg.deterministic)
    run = Run(runtime, cfg, student=student, teacher=teacher, tokenizer=tokenizer, method=method,
              train_examples=train_examples, valid=valid, valid_examples=valid_examples,
              checkpoint_dir=checkpoint_dir, desc=desc, teacher_cache=teacher_cache)
    try:
        run.resume_or_begin()
        run.student.train()
        run.state.started = time.perf_counter()
        first = run.state.step + 1
        bar = tqdm(range(first, cfg.steps + 1), desc=desc, disable=not runtime.is_main, initial=first - 1,
                   total=cfg.steps)
        for step in bar:
            began = time.perf_counter()
            record = run.step(step)
            seconds = time.perf_counter() - began
            if run.validates(step):
                score = run.validate(step, record)
                bar.set_postfix(loss=f"{record['loss']:.3f}", val=f"{score:.2f}",
                                best=f"{run.state.best_score:.2f}")
            elif step % 10 == 0:
                bar.set_postfix(loss=f"{record['loss']:.3f}", best=f"{run.state.best_score:.2f}")
            run.state.add(record)
            if tracking is not None:
                runtime.accelerator.log(step_metrics(record, seconds), step=step)
            if run.state.stopped_early:  # no checkpoint at the last step run: a re-run replays to the same stop
                break
            if run.checkpoints_after(step):
                run.checkpoint(step)
    finally:
        run.stop_counting()  # the models outlive the run, a failed one too
    if tracking is not None:
        runtime.accelerator.end_training()
    return run.finish()
