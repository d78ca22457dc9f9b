"""The ``Method`` interface: what a distillation objective needs and how it scores a batch.

A method declares the batch sources it trains on and whether it needs the teacher; the harness
does everything else (sampling, masking, reduction, optimisation, evaluation) identically for all
methods, so that two methods differ only in their objective.

Whatever a method needs beyond its per-token loss goes through the hooks of :class:`Method`, whose
defaults do nothing, so the harness never names a method:

* what it adds to a batch: :meth:`Method.annotate` (per-token marks on the examples) and
  :meth:`Method.batch_counts` (figures summed over the global batch, handed to the loss);
* what trains besides the student: :meth:`Method.module` and :meth:`Method.extra_trainable`
  (a sub-network of the loss with its own optimiser);
* what it does when the harness validates: :meth:`Method.validate`;
* what it logs: :meth:`Method.step_stats`.

A method's options are its dataclass fields (:mod:`mgsr_bench.methods.options`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
from transformers import PreTrainedTokenizerBase

from mgsr_bench.data.collate import Example, TokenBatch
from mgsr_bench.methods.options import check_values, option, option_fields
from mgsr_bench.sampling.replay import SCHEDULES, AdaptiveSchedule
from mgsr_bench.sampling.sources import BatchSource, SourceSpec


@dataclass
class ExtraTrainable:
    """A trainable part of the loss outside the student, with the optimiser that trains it.

    The harness steps it after every optimiser step of the student, saves it in checkpoints and
    returns its state with the best weights; it is not wrapped by any engine, so its gradients are
    averaged over processes before each step.
    """

    module: torch.nn.Module
    optimizer: torch.optim.Optimizer

    def step(self, average: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        """One optimiser step; ``average`` (the mean over processes) is applied to each gradient first."""
        if average is not None:
            for p in self.module.parameters():
                if p.grad is not None:
                    p.grad = average(p.grad)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])


@dataclass
class Validation:
    """What a method sees when the harness validates the student.

    ``step`` is the step just trained (0: before the first step of a fresh run; a resumed run
    restores its sources instead). :meth:`loss` is the student's token-mean cross-entropy on the
    validation examples, computed on first use only, so a method that needs none costs nothing.
    """

    step: int
    source: BatchSource | None
    compute_loss: Callable[[], float]
    _loss: float | None = field(default=None, repr=False)

    def loss(self) -> float:
        if self._loss is None:
            self._loss = self.compute_loss()
        return self._loss


def follow_validation_loss(validation: Validation) -> dict[str, float]:
    """The :meth:`Method.validate` of a method whose batch source's adaptive schedule follows the
    validation loss: the schedule sees every validation's loss (the one before training is its
    reference), and the loss and the schedule's threshold are logged."""
    source = validation.source
    if source is None or source.adaptive is None:
        return {}
    loss = validation.loss()
    source.observe_validation_loss(loss)
    return {"val_loss": loss, "replay_threshold": source.adaptive.threshold}


@dataclass(kw_only=True, eq=False)
class Method:
    """Base class for a registered method.

    Subclasses set ``name``, ``needs_teacher`` (whether the loss uses teacher logits) and
    ``chunk_tensors`` (its memory, for the planner), declare their options as annotated fields
    (:func:`mgsr_bench.methods.options.option` gives a field its default and rule), implement
    :meth:`token_losses` and, when they train on samples, override :meth:`source_spec`. The other
    hooks are optional (see the module's docstring).

    Every subclass is made a keyword-only dataclass when it is defined, so a method cannot forget
    to be one; identity, not option values, makes two methods equal, since each holds its own state.
    A subclass that checks options against each other or builds state from them overrides
    ``__post_init__`` and calls ``super().__post_init__()`` first.
    """

    name: ClassVar[str]
    needs_teacher: ClassVar[bool] = True
    #: the loss reads the teacher only as its next-token distribution at each position of the batch, at the
    #: option ``temperature``, and takes a :class:`~mgsr_bench.losses.divergences.TopK` in place of its
    #: logits: cached top-k rows (:mod:`mgsr_bench.teacher_cache`) can then stand in for the teacher on
    #: ground-truth batches (sampled batches still run it)
    teacher_distribution_only: ClassVar[bool] = False
    #: fp32 ``(rows, V)`` tensors that one chunk of this loss holds at its peak, forward and gradient
    #: together (student and teacher logits included), at the default options: the memory planner's
    #: loss term. Measured by ``python -m mgsr_bench.benchmarks.loss_memory``, which prints it for every
    #: registered method; the default is the largest of the built-in methods'.
    chunk_tensors: ClassVar[float] = 11.0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        dataclass(kw_only=True, eq=False)(cls)

    def __post_init__(self) -> None:
        check_values(self)

    def source_spec(self) -> SourceSpec:
        """Where the responses of each step's batch come from (default: the ground truth only)."""
        return SourceSpec()

    def options(self) -> dict[str, Any]:
        """The resolved options, as run records and run hashes hold them: every field's value."""
        return {name: getattr(self, name) for name in option_fields(type(self))}

    # -- what a method adds to a batch ------------------------------------------------------------
    def annotate(self, examples: list[Example], tokenizer: PreTrainedTokenizerBase) -> list[Example]:
        """The examples with the per-token marks the loss reads (``Example.marks``, arriving as
        ``TokenBatch.marks``); run on every step's batch after its source (default: unchanged)."""
        return examples

    def batch_counts(self, examples: list[Example]) -> dict[str, int]:
        """Counts over this process's share of a step's batch that the loss needs for the whole
        global batch: the harness sums them over processes and hands them to every micro-batch in
        ``TokenBatch.totals``. The same keys on every process (default: none)."""
        return {}

    # -- what trains besides the student ----------------------------------------------------------
    def module(self) -> torch.nn.Module | None:
        """A trainable sub-network that :meth:`token_losses` uses; the chunked loss collects its
        parameters' gradients chunk by chunk (default: none)."""
        return None

    def extra_trainable(self, device: torch.device) -> ExtraTrainable | None:
        """:meth:`module`, ready to train, with its optimiser; called once before the first step, so
        that it starts from the training seed whatever ran before (default: none)."""
        return None

    # -- validation and logging -------------------------------------------------------------------
    def validate(self, validation: Validation) -> dict[str, float]:
        """Called before training and after every validation of the student; returns figures for
        the step's history (ignored before training). Default: nothing."""
        return {}

    def step_stats(self) -> dict[str, float]:
        """Figures gathered since the last call, logged in the step's history (default: none)."""
        return {}

    def token_losses(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor | None,
                     tokens: TokenBatch) -> torch.Tensor:
        """Per-token loss values, shape ``(N,)``, for the N selected response positions.

        ``student_logits`` and ``teacher_logits`` are ``(N, V)``; ``tokens`` holds the N next-token
        ids, each position's origin and marks, and the global batch's totals (see
        :class:`TokenBatch`). The harness sums these values and divides by the number of response
        tokens in the global batch.
        """
        raise NotImplementedError


class AdaptiveReplay(Method):
    """A method that trains on DistiLLM's adaptive off-policy replay of student samples
    (:mod:`mgsr_bench.sampling.replay`; its defaults): the schedule's options, and a schedule that
    follows the validation loss."""

    init_threshold: float = option(0.0, ge=0, le=1)
    loss_eps: float = option(0.1, ge=0)
    capacity: int = option(1000, ge=1)
    replay_ratio: str = option("decreasing", choices=SCHEDULES)

    def adaptive_schedule(self) -> AdaptiveSchedule:
        return AdaptiveSchedule(init_threshold=self.init_threshold, loss_eps=self.loss_eps, capacity=self.capacity,
                                replay_ratio=self.replay_ratio)

    def source_spec(self) -> SourceSpec:
        return SourceSpec(adaptive=self.adaptive_schedule())

    def validate(self, validation: Validation) -> dict[str, float]:
        """The adaptive replay schedule follows the validation loss."""
        return follow_validation_loss(validation)
