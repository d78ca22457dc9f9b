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
  getting the weights out) are calls into :mod:`mgsr_bench.train.distributed`.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
import os
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase, get_cosine_schedule_with_warmup

from mgsr_bench.config import TrainConfig, config_hash
from mgsr_bench.data.collate import Example, collate, token_batch
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
from mgsr_bench.train import distributed
from mgsr_bench.train.checkpoint import Checkpoints, restore_source, rng_state, set_rng_state, source_state


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


def resolve_mixed_precision(setting: str) -> str:
    """``auto`` means bf16 on a GPU that supports it and full precision elsewhere (CPU included)."""
    if setting != "auto":
        return setting
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def make_accelerator(cfg: TrainConfig) -> Accelerator:
    """This process's ``Accelerator`` for a run with ``cfg``: the engine ``accelerate launch`` chose,
    and, for several processes on a machine without GPUs, gloo on the CPU (accelerate only picks it
    when told "cpu"). :func:`train` builds it unless given one: a caller builds it first where the
    engine must be up before the models load (ZeRO-3's partitioned loading)."""
    multi_cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    distributed.check_fsdp_accelerate()
    return Accelerator(mixed_precision=resolve_mixed_precision(cfg.mixed_precision), cpu=multi_cpu,
                       kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=cfg.process_timeout_s))])


def global_batches(examples: list[Example], batch_size: int, seed: int) -> Iterator[list[Example]]:
    """Endless shuffled global batches; every process draws the same sequence from the same seed."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(examples), generator=gen).tolist()
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield [examples[i] for i in order[start: start + batch_size]]


def micro_batch_loss(method: Method, student: PreTrainedModel, teacher: PreTrainedModel | None,
                     batch: dict[str, torch.Tensor], vocab_size: int, chunk_size: int = 1024,
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
    mask, tokens = token_batch(batch, totals)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    heads = (output_head(student), output_head(teacher) if method.needs_teacher else None)
    if chunk_size and heads[0] is not None and (heads[1] is not None or not method.needs_teacher):
        hidden = last_hidden_states(student, inputs)[mask]
        teacher_hidden = teacher_weight = None
        if method.needs_teacher:
            with torch.no_grad():
                teacher_hidden = last_hidden_states(teacher, inputs)[mask]
            teacher_weight = heads[1].weight[:vocab_size]
        module = method.module()
        params = [p for p in module.parameters() if p.requires_grad] if module is not None else []
        return chunked_linear_loss(hidden, heads[0].weight[:vocab_size], teacher_hidden, teacher_weight,
                                   tokens, method.token_losses, chunk_size, params)
    student_logits = student(**inputs).logits[mask][:, :vocab_size]
    teacher_logits = None
    if method.needs_teacher:
        with torch.no_grad():
            teacher_logits = teacher(**inputs).logits[mask][:, :vocab_size]
    return method.token_losses(student_logits, teacher_logits, tokens).sum()


def backward_global_batch(method: Method, student: PreTrainedModel, teacher: PreTrainedModel | None,
                          examples: list[Example], n_tokens: int, micro_batch: int, pad_id: int,
                          accelerator: Accelerator, vocab_size: int, chunk_size: int = 1024,
                          totals: dict[str, int] | None = None) -> float:
    """Accumulate the gradients of one optimiser step; returns this process's share of the loss.

    ``examples`` is this process's share of the global batch and ``n_tokens`` the number of
    response tokens in the *whole* global batch. Each micro-batch's backward pass uses
    ``token-loss sum * world / n_tokens``: summed over micro-batches and averaged by DDP over
    processes, that is exactly the token mean over the global batch, however it is split.
    """
    world = accelerator.num_processes
    micro = [examples[i: i + micro_batch] for i in range(0, len(examples), micro_batch)]
    losses = []
    for i, chunk in enumerate(micro):
        batch = {k: v.to(accelerator.device) for k, v in collate(chunk, pad_id).items()}
        last = i == len(micro) - 1
        with distributed.local_accumulation(accelerator, student, last):
            with accelerator.autocast():  # the forward under autocast, the backward outside it
                loss = micro_batch_loss(method, student, teacher, batch, vocab_size, chunk_size,
                                        totals) * world / n_tokens
            distributed.backward(accelerator, loss, last)
        losses.append(loss.detach())
    return sum(part.item() for part in losses) / world  # summed in Python's float64, whatever the model's dtype


def response_tokens(examples: list[Example]) -> int:
    """Tokens that carry a loss (response tokens including EOS) in a list of examples.

    With an empty prompt nothing predicts the first response token, so it carries no loss.
    """
    return sum(len(e.response_ids) - (0 if e.prompt_ids else 1) for e in examples)


def global_totals(method: Method, examples: list[Example], accelerator: Accelerator) -> dict[str, int]:
    """The response tokens (``"tokens"``) and the method's batch counts of the whole global batch,
    ``examples`` being this process's share."""
    totals = {**method.batch_counts(examples), "tokens": response_tokens(examples)}
    if accelerator.num_processes > 1:
        summed = accelerator.reduce(torch.tensor(list(totals.values()), device=accelerator.device), "sum")
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
    loss = _NextTokenLoss()
    total, count = 0.0, 0
    for start in range(0, len(valid_examples), cfg.micro_batch):
        chunk = valid_examples[start: start + cfg.micro_batch]
        batch = {k: v.to(device) for k, v in collate(chunk, tokenizer.pad_token_id).items()}
        total += micro_batch_loss(loss, model, None, batch, len(tokenizer), cfg.loss_chunk_size).item()
        count += response_tokens(chunk)
    model.train()
    return total / count


@torch.no_grad()
def validation_score(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, valid: list[dict[str, Any]],
                     valid_examples: list[Example], cfg: TrainConfig, device: torch.device) -> float:
    """Higher is better: greedy ROUGE-L on the validation records, or minus the validation loss."""
    if cfg.val_metric == "rougeL":
        greedy = EvalSettings(greedy=True, max_new_tokens=cfg.val_max_new_tokens, no_repeat_ngram_size=0)
        preds = generate(model, tokenizer, [r["prompt"] for r in valid], greedy)
        return corpus_scores(preds, [r["output"] for r in valid])["rougeL"]
    return -validation_loss(model, tokenizer, valid_examples, cfg, device)


def _loss_now(record: dict[str, Any], model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
              valid_examples: list[Example], cfg: TrainConfig, device: torch.device) -> Callable[[], float]:
    """The validation loss for a method's validate hook: the one just recorded, or computed on demand."""
    if "val_loss" in record:
        return lambda: record["val_loss"]
    return lambda: validation_loss(model, tokenizer, valid_examples, cfg, device)


def _digest(examples: list[Example]) -> str:
    """A fingerprint of the training data (every example's token ids): a checkpoint resumes only on the same data."""
    h = hashlib.sha256()
    for e in examples:
        h.update(repr((e.prompt_ids, e.response_ids)).encode())
    return h.hexdigest()[:16]


def train(student: PreTrainedModel, teacher: PreTrainedModel | None, tokenizer: PreTrainedTokenizerBase,
          method: Method, train_examples: list[Example], valid: list[dict[str, Any]],
          valid_examples: list[Example], cfg: TrainConfig, desc: str = "train",
          checkpoint_dir: Path | None = None, accelerator: Accelerator | None = None) -> TrainResult:
    """Train ``student`` with ``method``; on return it holds the best validated weights, and
    ``result.model`` is the trained student as an ordinary model (the same object, unless the engine
    sharded its weights: then a gathered copy on the main process).

    With ``checkpoint_dir``, a checkpoint is written every ``cfg.checkpoint_every`` steps and the run
    continues from the newest one found there (written by the same configuration), so a killed run
    re-started with the same arguments ends exactly as an uninterrupted one, under every engine
    (each process resumes with its own random state; sharded engines write their shards, see
    :mod:`mgsr_bench.train.checkpoint`). A non-finite loss stops the run with the step named and,
    with ``checkpoint_dir``, the weights and optimiser from before that step and the offending
    batch saved.
    """
    accelerator = accelerator or make_accelerator(cfg)
    torch.manual_seed(cfg.seed)
    if cfg.deterministic:  # cuBLAS needs a fixed workspace for deterministic matrix products
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    kind = distributed.engine(accelerator)
    if kind in distributed.SHARDED and hasattr(student, "peft_config"):
        raise UserError(distributed.LORA_ENGINES)
    if cfg.gradient_checkpointing:  # named activation checkpointing in recent transformers (the old name is deprecated)
        if hasattr(student, "activation_checkpointing_enable"):
            student.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    rank, world = accelerator.process_index, accelerator.num_processes
    spec = method.source_spec()
    uses_teacher = method.needs_teacher or spec.teacher_prob > 0 or spec.both or spec.rewrite is not None
    examples = [*train_examples, *valid_examples]
    longest = max((len(e.prompt_ids) + len(e.response_ids) for e in examples), default=0)
    sampled = max((len(e.prompt_ids) for e in train_examples), default=0) + cfg.gen_max_new_tokens
    for model, role in ((student, "student"), *(((teacher, "teacher"),) if uses_teacher else ())):
        check_positions(model, role, longest, "the longest training or validation example",
                        "use a model with more positions, or shorter examples")
        if spec.samples:
            check_positions(model, role, sampled, "the longest prompt plus train.gen_max_new_tokens",
                            "lower train.gen_max_new_tokens")
    if len(train_examples) < cfg.global_batch * world:
        raise UserError(f"{len(train_examples)} training examples cannot fill one global batch of "
                        f"{cfg.global_batch * world} (micro_batch x grad_accum x processes); lower train.micro_batch")
    run_hash = config_hash({"train": {k: v for k, v in dataclasses.asdict(cfg).items()
                                      if k not in ("checkpoint_every", "keep_checkpoints", "process_timeout_s")},
                            "method": method.name, "options": method.options(), "vocab": len(tokenizer),
                            "processes": world,
                            "data": _digest(train_examples),
                            "student": weight_shapes(student),
                            "teacher": count_parameters(teacher) if teacher is not None else 0})
    distributed.check_processes_agree(accelerator, run_hash, teacher=teacher, student=student)
    trainable = (p for p in student.parameters() if p.requires_grad)  # a LoRA student: the adapters only
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * cfg.steps), cfg.steps)
    # The scheduler is stepped by hand once per optimiser step; accelerate's prepared scheduler
    # would step once per process and run the schedule `world` times too fast.
    distributed.configure_deepspeed(accelerator, cfg.micro_batch, cfg.grad_accum, cfg.max_grad_norm)
    if distributed.rank0_loading(accelerator):  # FSDP's preparation broadcasts the parameters themselves
        distributed.broadcast_from_main(student, accelerator, parameters=False)
    student, optimizer = accelerator.prepare(student, optimizer)
    model = accelerator.unwrap_model(student)  # what generation, validation and saving use
    checkpoints = (Checkpoints(checkpoint_dir, run_hash, accelerator, model, optimizer, cfg.keep_checkpoints,
                               cfg.checkpoint_every) if checkpoint_dir is not None else None)
    # ZeRO-3 frees each module's weights after its forward: the loss then needs the heads' own
    # forward (full logits) instead of reading their weights for the chunked loss.
    chunk_size = 0 if kind == "zero3" else cfg.loss_chunk_size
    extra = method.extra_trainable(accelerator.device)  # a loss's own sub-network, with its optimiser
    if uses_teacher:
        if teacher is None:
            raise ValueError(f"method {method.name!r} needs a teacher")
        teacher = distributed.prepare_teacher(teacher, accelerator, cfg.shard_teacher)
    # Sampling gathers the sharded models' weights once per call (no collective while decoding).
    source = (BatchSource(spec, tokenizer, cfg.gen_max_new_tokens, cfg.gen_temperature, cfg.seed, cfg.micro_batch,
                          gather=distributed.gathered)
              if spec.samples else None)
    batches = global_batches(train_examples, cfg.global_batch * world, cfg.seed)

    valid, valid_examples = valid[: cfg.val_size], valid_examples[: cfg.val_size]
    result = TrainResult(val_examples=len(valid))
    patience = Patience(cfg.patience)
    best_state: dict[str, torch.Tensor] | None = None
    loaded = checkpoints.load() if checkpoints is not None else None  # weights and optimiser loaded in place
    first_step, elapsed_before = 1, 0.0
    if loaded is not None:
        resumed, this_process = loaded
        scheduler.load_state_dict(resumed["scheduler"])
        if extra is not None:
            extra.load_state_dict({"module": resumed["module"], "optimizer": resumed["module_optimizer"]})
        restore_source(source, this_process["source"])
        if accelerator.scaler is not None and resumed.get("scaler") is not None:  # fp16's loss scale
            accelerator.scaler.load_state_dict(resumed["scaler"])
        result.history, result.best_score, result.best_step = resumed["history"], resumed["best_score"], \
            resumed["best_step"]
        best_state, result.method_state = resumed["best_state"], resumed["method_state"]
        first_step, elapsed_before = resumed["step"] + 1, resumed["elapsed"]
        patience.stale = resumed["stale_validations"]
        for _ in range(resumed["step"]):  # the data order is a function of the seed: replay the draws
            next(batches)
        set_rng_state(this_process["rng"])
    else:  # a fresh run: the method sees the student before training (a resumed run restored that state)

        def loss_before_training() -> float:
            with distributed.gathered(model) as (whole,):
                return validation_loss(whole, tokenizer, valid_examples, cfg, accelerator.device)

        method.validate(Validation(0, source, loss_before_training))

    def snapshot(step: int) -> dict[str, Any]:
        """The run's state after ``step`` (the checkpoint adds the weights and optimiser)."""
        return {"step": step, "scheduler": scheduler.state_dict(),
                "module": extra.module.state_dict() if extra is not None else None,
                "module_optimizer": extra.optimizer.state_dict() if extra is not None else None,
                "history": result.history, "best_score": result.best_score, "best_step": result.best_step,
                "stale_validations": patience.stale, "method_state": result.method_state,
                "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
                "elapsed": elapsed_before + time.perf_counter() - start}

    def own() -> dict[str, Any]:
        """What differs between processes: the random streams, and the samples each one drew."""
        return {"rng": rng_state(), "source": source_state(source)}

    student.train()
    start = time.perf_counter()
    bar = tqdm(range(first_step, cfg.steps + 1), desc=desc, disable=not accelerator.is_main_process,
               initial=first_step - 1, total=cfg.steps)
    for step in bar:
        mine = next(batches)[rank::world]
        origin = "ground_truth"
        if source is not None:  # every process draws the same source; each samples its own share
            mine, origin = source(mine, model, teacher, step, cfg.steps)
        mine = method.annotate(mine, tokenizer)
        totals = global_totals(method, mine, accelerator)
        n_tokens = totals["tokens"]
        step_loss = backward_global_batch(method, student, teacher, mine, n_tokens, cfg.micro_batch,
                                          tokenizer.pad_token_id, accelerator, len(tokenizer), chunk_size, totals)
        if world > 1:  # summed in float64, as each process's own share was
            share = torch.tensor(step_loss, dtype=torch.float64, device=accelerator.device)
            step_loss = accelerator.reduce(share, "sum").item()
        if not math.isfinite(step_loss):
            where = ""
            if checkpoints is not None:  # weights are still those before the step (every process sees the loss)
                path = checkpoints.save_failure(step, snapshot(step - 1), own(), best_state, mine)
                where = f"; the state before it and its batch are in {path}"
            raise FloatingPointError(f"non-finite loss {step_loss} at step {step} ({desc}){where}")
        grad_norm = distributed.optimizer_step(accelerator, student, optimizer, cfg.max_grad_norm)
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if extra is not None:  # not wrapped by any engine: its gradients are averaged here
            extra.step((lambda grad: accelerator.reduce(grad, "mean")) if world > 1 else None)
        record: dict[str, Any] = {"step": step, "loss": step_loss, "lr": scheduler.get_last_lr()[0],
                                  "grad_norm": grad_norm, "source": origin, "tokens": n_tokens,
                                  **(source.step_stats() if source is not None else {}), **method.step_stats()}
        if step % cfg.eval_every == 0 or step == cfg.steps:
            with distributed.gathered(model) as (whole,):  # every process validates the same examples
                # the main process's score for all: whether it is a new best decides collectives below
                score = distributed.from_main(validation_score(whole, tokenizer, valid, valid_examples, cfg,
                                                               accelerator.device))
                if cfg.val_metric == "loss":
                    record["val_loss"] = -score  # the score is minus the loss (higher is better)
                else:
                    record["val_rougeL"] = score
                loss = _loss_now(record, whole, tokenizer, valid_examples, cfg, accelerator.device)
                record.update(method.validate(Validation(step, source, loss)))
            improved = score > result.best_score  # the same on every process: so is the stop below
            if patience.stops(improved) and step < cfg.steps:
                result.stopped_early = record["stopped_early"] = True
            if improved:
                result.best_score, result.best_step = score, step
                best_state = distributed.snapshot(accelerator, model)
                if extra is not None:  # the sub-network saved with the student is the one from the same step
                    result.method_state = copy.deepcopy(extra.state_dict())
            bar.set_postfix(loss=f"{step_loss:.3f}", val=f"{score:.2f}", best=f"{result.best_score:.2f}")
        elif step % 10 == 0:
            bar.set_postfix(loss=f"{step_loss:.3f}", best=f"{result.best_score:.2f}")
        result.history.append(record)
        result.steps_run = step
        if result.stopped_early:  # no checkpoint at the last step run: a re-run replays to the same stop
            break
        if checkpoints is not None and cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.steps:
            checkpoints.save(step, snapshot(step), own(), best_state)
    result.wall_time_s = elapsed_before + time.perf_counter() - start
    result.seconds_per_step = result.wall_time_s / result.steps_run
    if extra is not None and result.method_state is None:
        result.method_state = extra.state_dict()
    if result.best_step:
        distributed.restore(accelerator, model, best_state)
    result.model = distributed.plain_model(accelerator, model)
    model.eval()
    return result
