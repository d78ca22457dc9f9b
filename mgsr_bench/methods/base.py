"""The ``Method`` interface: what a distillation objective needs and how it scores a batch.

A method declares the batch sources it trains on and whether it needs the teacher; the harness
does everything else (sampling, masking, reduction, optimisation, evaluation) identically for all
methods, so that two methods differ only in their objective.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

# Batch sources a method can ask for. Only ground truth exists in the foundation harness; student
# and teacher samples arrive with the sampling sources.
SOURCES = ("ground_truth",)


class Method:
    """Base class for a registered method.

    Subclasses set ``name``, ``needs_teacher`` and ``sources``, accept their options as keyword
    arguments in ``__init__`` (unknown options are an error, caught by the recipe loader) and
    implement :meth:`token_losses`.
    """

    name: ClassVar[str]
    needs_teacher: ClassVar[bool] = True
    sources: ClassVar[tuple[str, ...]] = ("ground_truth",)

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
