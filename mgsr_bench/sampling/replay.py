"""DistiLLM's adaptive off-policy schedule with a replay buffer of student samples.

Ko et al., 2024 (DistiLLM) sample student outputs with a probability that starts at
``init_threshold`` and grows by ``step_size`` whenever the validation loss rises by at least
``loss_eps`` over the last value that raised it. Each step draws ``r ~ U(0, 1)``:

* ``r < sample_threshold``, or ``r < threshold`` while the buffer is not yet full: generate new
  student samples, add them to the buffer and train on them;
* else ``r < threshold``: train on a batch drawn from the replay buffer;
* else: train on the ground truth.

``sample_threshold`` is ``threshold`` scaled by the replay schedule: ``decreasing``
(``1 - step / total``, DistiLLM's default), ``constant`` (``0.5``) or ``increasing`` (``step / total``).
The decision follows DistiLLM's ``finetune.py``; the buffer keeps examples (prompt and response
ids), so the masking and reduction are the harness's, as for every other source.
"""

from __future__ import annotations

import dataclasses
import random
from collections import deque
from dataclasses import dataclass
from typing import Any

from mgsr_bench.data.collate import Example

SCHEDULES = ("decreasing", "constant", "increasing")


@dataclass(frozen=True)
class AdaptiveSchedule:
    """DistiLLM's defaults (its training scripts): threshold from 0, +0.1 per rise of 0.1, 1000 samples."""

    init_threshold: float = 0.0
    loss_eps: float = 0.1
    step_size: float = 0.1
    capacity: int = 1000
    replay_ratio: str = "decreasing"

    def __post_init__(self) -> None:
        if not 0.0 <= self.init_threshold <= 1.0:
            raise ValueError(f"init_threshold must be in [0, 1], got {self.init_threshold}")
        if self.loss_eps < 0 or self.step_size <= 0:
            raise ValueError("loss_eps must be >= 0 and step_size > 0")
        if self.capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {self.capacity}")
        if self.replay_ratio not in SCHEDULES:
            raise ValueError(f"replay_ratio must be one of {', '.join(SCHEDULES)}, got {self.replay_ratio!r}")


class AdaptiveOffPolicy:
    """The schedule's state: the threshold, the last loss that raised it, and the replay buffer."""

    def __init__(self, schedule: AdaptiveSchedule, seed: int) -> None:
        self.schedule = schedule
        self.threshold = schedule.init_threshold
        self.reference_loss: float | None = None
        self.buffer: deque[Example] = deque(maxlen=schedule.capacity)
        self.rng = random.Random(seed)

    def sample_threshold(self, step: int, total_steps: int) -> float:
        if self.schedule.replay_ratio == "constant":
            return self.threshold * 0.5
        if self.schedule.replay_ratio == "increasing":
            return self.threshold * step / total_steps
        return self.threshold * (1 - step / total_steps)

    def choose(self, step: int, total_steps: int, batch_size: int) -> str:
        """``student`` (generate and store), ``replay`` or ``ground_truth`` for this step."""
        r = self.rng.random()
        full = len(self.buffer) >= self.schedule.capacity
        if r < self.sample_threshold(step, total_steps) or (r < self.threshold and not full):
            return "student"
        if r < self.threshold and len(self.buffer) >= batch_size:
            return "replay"
        return "ground_truth"

    def store(self, examples: list[Example]) -> None:
        self.buffer.extend(examples)

    def replay(self, batch_size: int) -> list[Example]:
        return self.rng.sample(list(self.buffer), k=batch_size)

    def observe_validation_loss(self, loss: float) -> None:
        """The first loss is the reference; a rise of ``loss_eps`` raises the threshold and the reference."""
        if self.reference_loss is None:
            self.reference_loss = loss
        elif loss >= self.reference_loss + self.schedule.loss_eps:
            self.threshold = min(self.threshold + self.schedule.step_size, 1.0)
            self.reference_loss = loss

    def state_dict(self) -> dict[str, Any]:
        """The generator, threshold, reference loss and buffer: a checkpoint's, to go on where it stopped."""
        return {"rng": self.rng.getstate(), "threshold": self.threshold, "reference_loss": self.reference_loss,
                "buffer": [dataclasses.asdict(e) for e in self.buffer]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.setstate(as_tuples(state["rng"]))
        self.threshold, self.reference_loss = state["threshold"], state["reference_loss"]
        self.buffer.clear()  # samples are stored before a method marks them: "marks" may be empty or absent
        self.buffer.extend(Example(row["prompt_ids"], row["response_ids"], row["origin"], row.get("marks") or {})
                           for row in state["buffer"])


def as_tuples(value: Any) -> Any:
    """A generator's state as ``setstate`` wants it: the nested tuples ``getstate`` gave (a load may give lists)."""
    return tuple(as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value
