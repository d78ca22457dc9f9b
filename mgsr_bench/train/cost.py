"""What a training run cost: counted per step, summed in the run record, drawn against quality.

Every step's history record carries the positions its forward passes processed: the student's with
gradients (``student_tokens``: the training forwards, whose backward costs twice as much again),
the student's without (``student_sampling_tokens``: sampling, SCRG's passes), the teacher's
(``teacher_tokens``: the loss's forward, sampling, SCRG), and the tokens sampled
(``generated_tokens``). Positions are counted where they enter a model (a hook on its input
embeddings), padding included, since the compute pays for it; a cached teacher that is not run
counts nothing. Validation, which is the same for every method, is not counted. The run's
:func:`training_cost` sums them, with the device-seconds (the training wall time, validation
included, x processes) and the device. Under ZeRO-3 a run that samples records no counts: its
sampling runs on gathered copies of the models, which the counters do not see.
"""

from __future__ import annotations

from typing import Any

import torch


class ForwardPositions:
    """Positions entering a model's forward passes, apart for passes with and without gradients."""

    def __init__(self, model: torch.nn.Module | None) -> None:
        self.grad = self.no_grad = 0
        try:
            embeddings = model.get_input_embeddings() if model is not None else None
        except (AttributeError, NotImplementedError):  # a model without the Hugging Face interface
            embeddings = None
        self._hook = embeddings.register_forward_pre_hook(self._count) if embeddings is not None else None

    def _count(self, module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        positions = args[0].numel() if args else 0  # the ids, as Hugging Face models pass them
        if torch.is_grad_enabled():
            self.grad += positions
        else:
            self.no_grad += positions

    def close(self) -> None:
        """Stop counting: the model outlives the run (evaluation, the next student's run)."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def take(self) -> tuple[int, int]:
        """``(with gradients, without)`` since the last call."""
        counts = self.grad, self.no_grad
        self.grad = self.no_grad = 0
        return counts


def training_cost(history: list[dict[str, Any]], wall_time_s: float, processes: int, device: str) -> dict[str, Any]:
    """The run record's ``training.cost``: device-seconds and the device, the response tokens the loss
    scored (``training_tokens``), and the sums of the steps' counts (module docstring)."""
    def total(key: str) -> int:
        return sum(int(h.get(key, 0)) for h in history)

    cost = {"device": device, "processes": processes, "device_seconds": round(wall_time_s * processes, 2),
            "training_tokens": total("tokens")}
    if history and all("student_tokens" in h for h in history):  # steps that were counted (not ZeRO-3's sampling)
        cost.update(student_forward_tokens=total("student_tokens"),
                    student_sampling_tokens=total("student_sampling_tokens"),
                    teacher_forward_tokens=total("teacher_tokens"), generated_tokens=total("generated_tokens"))
    return cost


def device_name(device: torch.device) -> str:
    """The device's name as records give it: the GPU's model, else the device type."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def estimated_flops(cost: dict[str, Any], student_params: int, teacher_params: int) -> float:
    """``6 N_s`` per student training position (forward and backward), ``2 N`` per position of a
    forward without gradients (student sampling, the teacher): the usual dense-transformer estimate,
    without attention's quadratic term."""
    return (6 * student_params * cost["student_forward_tokens"]
            + 2 * student_params * cost["student_sampling_tokens"]
            + 2 * teacher_params * cost["teacher_forward_tokens"])
