"""The ``Method`` interface: what a distillation objective needs and how it scores a batch.

A method declares the batch sources it trains on and whether it needs the teacher; the harness
does everything else (sampling, masking, reduction, optimisation, evaluation) identically for all
methods, so that two methods differ only in their objective.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from mgsr_bench.sampling.sources import SourceSpec


class Method:
    """Base class for a registered method.

    Subclasses set ``name`` and ``needs_teacher`` (whether the loss uses teacher logits), accept
    their options as keyword arguments in ``__init__`` (unknown options are an error, caught by the
    recipe loader), implement :meth:`token_losses` and, when they train on samples, override
    :meth:`source_spec`.
    """

    name: ClassVar[str]
    needs_teacher: ClassVar[bool] = True

    def source_spec(self) -> SourceSpec:
        """Where the responses of each step's batch come from (default: the ground truth only)."""
        return SourceSpec()

    def options(self) -> dict[str, Any]:
        """The resolved options, recorded in the run record."""
        return dict(vars(self))

    def token_losses(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor | None,
                     targets: torch.Tensor) -> torch.Tensor:
        """Per-token loss values, shape ``(N,)``, for the N selected response positions.

        ``student_logits`` and ``teacher_logits`` are ``(N, V)``; ``targets`` holds the N next-token
        ids. The harness sums these values and divides by the number of response tokens in the
        global batch.
        """
        raise NotImplementedError
