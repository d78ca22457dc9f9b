"""The ``Method`` interface: what a distillation objective needs and how it scores a batch.

A method declares the batch sources it trains on and whether it needs the teacher; the harness
does everything else (sampling, masking, reduction, optimisation, evaluation) identically for all
methods, so that two methods differ only in their objective.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from transformers import PreTrainedTokenizerBase

from mgsr_bench.data.collate import Example, TokenBatch
from mgsr_bench.sampling.sources import SourceSpec


class Method:
    """Base class for a registered method.

    Subclasses set ``name``, ``needs_teacher`` (whether the loss uses teacher logits) and
    ``chunk_tensors`` (its memory, for the planner), accept
    their options as keyword arguments in ``__init__`` (unknown options are an error, caught by the
    recipe loader), implement :meth:`token_losses` and, when they train on samples, override
    :meth:`source_spec`. Methods with more structure override the optional hooks: :meth:`annotate`
    (per-example side information such as span pairs), :meth:`module` (a trainable sub-network,
    given its own optimiser by the harness) and :meth:`step_stats` (figures logged per step).
    """

    #: learning rate of the optimiser the harness gives :meth:`module`, when there is one
    module_lr: float = 1e-3

    name: ClassVar[str]
    needs_teacher: ClassVar[bool] = True
    #: fp32 ``(rows, V)`` tensors that one chunk of this loss holds at its peak, forward and gradient
    #: together (student and teacher logits included), at the default options: the memory planner's
    #: loss term. Measured by ``python -m mgsr_bench.benchmarks.loss_memory``, which prints it for every
    #: registered method; the default is the largest of the built-in methods'.
    chunk_tensors: ClassVar[float] = 11.0

    def source_spec(self) -> SourceSpec:
        """Where the responses of each step's batch come from (default: the ground truth only)."""
        return SourceSpec()

    def options(self) -> dict[str, Any]:
        """The resolved options, recorded in the run record."""
        return dict(vars(self))

    def annotate(self, examples: list[Example], tokenizer: PreTrainedTokenizerBase) -> list[Example]:
        """The examples with any per-token side information the loss needs (default: unchanged)."""
        return examples

    def module(self) -> torch.nn.Module | None:
        """A trainable sub-network of the loss, trained with its own optimiser (default: none)."""
        return None

    def step_stats(self) -> dict[str, float]:
        """Figures gathered since the last call, logged in the step's history (default: none)."""
        return {}

    def token_losses(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor | None,
                     tokens: TokenBatch) -> torch.Tensor:
        """Per-token loss values, shape ``(N,)``, for the N selected response positions.

        ``student_logits`` and ``teacher_logits`` are ``(N, V)``; ``tokens`` holds the N next-token
        ids and each position's origin (see :class:`TokenBatch`). The harness sums these values
        and divides by the number of response tokens in the global batch.
        """
        raise NotImplementedError
