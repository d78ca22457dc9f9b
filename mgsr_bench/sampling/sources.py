"""Batch sources: each training step's responses come from the data, the student or the teacher.

A method states what it needs as a :class:`SourceSpec`; the harness builds one
:class:`BatchSource` from it and asks it for every global batch. The decision per step is drawn
from a generator seeded with the training seed, so every process makes the same choice and a run
is reproducible.

* ground truth: the batch as drawn from the training set;
* student samples ("on-policy", with probability ``student_prob`` per step): the prompts are kept,
  the responses are sampled from the current student;
* teacher samples (with probability ``teacher_prob``): the responses are sampled from the teacher;
* both (for estimators that take one term under each model): half of the rows sampled from the
  teacher, the other half from the student;
* adaptive off-policy replay (:mod:`mgsr_bench.sampling.replay`): student samples, stored and
  replayed on an adaptive schedule driven by the validation loss.

A method may also give a ``rewrite`` step: it rewrites every batch of freshly generated student
samples before training (and before they enter the replay buffer), with the source's own
:class:`Sampler`, so that whatever it re-generates is sampled exactly like the first draft.
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Iterator

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mgsr_bench.data.collate import Example
from mgsr_bench.sampling.decode import Decoded, decode
from mgsr_bench.sampling.replay import AdaptiveOffPolicy, AdaptiveSchedule, as_tuples


@dataclass(frozen=True)
class Sampler:
    """What a rewrite step gets from the batch source: its sampler and its settings.

    ``generate(model, prompts, limits, keep_logits)`` samples continuations with the source's own
    settings, each prompt up to its own token limit; ``max_new_tokens`` is the response length
    limit the samples were drawn with; ``micro_batch`` rows go through one no-grad forward.
    """

    generate: Callable[[PreTrainedModel, list[list[int]], int | list[int], bool], Decoded]
    eos_id: int
    pad_id: int
    vocab_size: int
    max_new_tokens: int
    micro_batch: int = 8


# (samples, student, teacher, Sampler, the student's logits of each sampled token) -> (new samples, figures)
Rewrite = Callable[[list[Example], PreTrainedModel, PreTrainedModel, Sampler, list[torch.Tensor] | None],
                   tuple[list[Example], dict[str, float]]]


# (student, teacher) -> a context giving the models to generate with (the same ones, or gathered copies)
Gather = Callable[..., ContextManager[list[PreTrainedModel | None]]]


@contextmanager
def as_they_are(*models: PreTrainedModel | None) -> Iterator[list[PreTrainedModel | None]]:
    """The default :data:`Gather`: unsharded models generate as they are."""
    yield list(models)


@dataclass(frozen=True)
class SourceSpec:
    """Per-step probabilities of replacing the ground-truth responses by student or teacher samples."""

    student_prob: float = 0.0
    teacher_prob: float = 0.0
    adaptive: AdaptiveSchedule | None = None  # adaptive off-policy replay; excludes the two probabilities
    both: bool = False  # every step: first half of the rows teacher samples, second half student samples
    rewrite: Rewrite | None = None  # applied to every batch of fresh student samples (it may use the teacher)

    def __post_init__(self) -> None:
        if (self.adaptive is not None or self.both) and (self.student_prob or self.teacher_prob):
            raise ValueError("an adaptive or 'both' schedule decides the sources itself: leave the probabilities at 0")
        if self.adaptive is not None and self.both:
            raise ValueError("choose one of an adaptive schedule and 'both'")
        for name in ("student_prob", "teacher_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.student_prob + self.teacher_prob > 1.0:
            raise ValueError("student_prob + teacher_prob must be <= 1")

    @property
    def samples_student(self) -> bool:
        """Whether some steps train on the student's samples (fresh or replayed)."""
        return self.student_prob > 0 or self.adaptive is not None or self.both

    @property
    def samples_teacher(self) -> bool:
        return self.teacher_prob > 0 or self.both

    @property
    def samples(self) -> bool:
        return self.samples_student or self.samples_teacher

    @property
    def ground_truth(self) -> bool:
        """Whether some steps train on the ground-truth responses (an adaptive schedule's may)."""
        return self.adaptive is not None or (not self.both and self.student_prob + self.teacher_prob < 1.0)

    @property
    def uses_teacher(self) -> bool:
        """Whether the sources need the teacher: to sample from, or for the rewrite step."""
        return self.samples_teacher or self.rewrite is not None


class BatchSource:
    """Turns each drawn global batch into the batch the method trains on."""

    def __init__(self, spec: SourceSpec, tokenizer: PreTrainedTokenizerBase, max_new_tokens: int,
                 temperature: float, seed: int, micro_batch: int = 8,
                 gather: Gather | None = None) -> None:
        self.spec = spec
        self.gather = gather or as_they_are  # around every sampling call (the harness gathers sharded weights)
        self.eos_id, self.pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
        self.vocab_size = len(tokenizer)
        self.micro_batch = micro_batch  # rows per no-grad forward of a rewrite step
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.rng = random.Random(seed)
        self.adaptive = AdaptiveOffPolicy(spec.adaptive, seed) if spec.adaptive is not None else None
        self.counts = {"ground_truth": 0, "student": 0, "teacher": 0, "replay": 0, "both": 0}
        self.generated = 0  # tokens sampled since the last take_generated()
        self.stats: dict[str, float] = {}

    def observe_validation_loss(self, loss: float) -> None:
        """Feed the adaptive schedule the student's validation loss (nothing without one)."""
        if self.adaptive is not None:
            self.adaptive.observe_validation_loss(loss)

    def choose(self, step: int = 1, total_steps: int = 1, batch_size: int = 1) -> str:
        """The source of the next batch, drawn once per step."""
        if self.adaptive is not None:
            return self.adaptive.choose(step, total_steps, batch_size)
        if self.spec.both:
            return "both"
        r = self.rng.random()
        if r < self.spec.student_prob:
            return "student"
        if r < self.spec.student_prob + self.spec.teacher_prob:
            return "teacher"
        return "ground_truth"

    def state_dict(self) -> dict[str, Any]:
        """The per-step generator, the count of each source, and the adaptive schedule's state.

        Each process of a run samples its own rows, so each saves its own."""
        state: dict[str, Any] = {"rng": self.rng.getstate(), "counts": dict(self.counts)}
        if self.adaptive is not None:
            state["adaptive"] = self.adaptive.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.setstate(as_tuples(state["rng"]))
        self.counts = dict(state["counts"])
        if "adaptive" in state:
            self.adaptive.load_state_dict(state["adaptive"])

    def step_stats(self) -> dict[str, float]:
        """The rewrite step's figures for the last batch of student samples (cleared when read)."""
        stats, self.stats = self.stats, {}
        return stats

    def generate(self, model: PreTrainedModel, prompts: list[list[int]], max_new_tokens: int | list[int],
                 keep_logits: bool = False) -> Decoded:
        """Sampled continuations of ``prompts`` with this source's settings (one token limit, or one per prompt)."""
        out = decode(model, prompts, self.eos_id, self.pad_id, max_new_tokens, self.vocab_size,
                     temperature=self.temperature, keep_logits=keep_logits)
        self.generated += sum(len(tokens) for tokens in out.tokens)
        return out

    def take_generated(self) -> int:
        """Tokens sampled (and re-sampled by a rewrite step) since the last call: a step's cost."""
        generated, self.generated = self.generated, 0
        return generated

    def sample(self, model: PreTrainedModel, batch: list[Example], origin: str,
               keep_logits: bool = False) -> tuple[list[Example], list[torch.Tensor] | None]:
        """The sampled rows and, when kept, the logits each sampled token was drawn from."""
        prompts = [e.prompt_ids for e in batch]
        out = self.generate(model, prompts, self.max_new_tokens, keep_logits)
        # An empty response (the prompt's end hit the limit) still needs one target: keep EOS; it
        # has no sampling logits, so a rewrite step then runs its own forward.
        samples = [Example(p, r or [self.eos_id], origin=origin) for p, r in zip(prompts, out.tokens)]
        # (an empty prompt has no position predicting its first token: the rewrite then runs its own pass)
        logits = out.logits if keep_logits and all(out.tokens) and all(prompts) else None
        return samples, logits

    def student_samples(self, batch: list[Example], student: PreTrainedModel,
                        teacher: PreTrainedModel | None) -> list[Example]:
        samples, logits = self.sample(student, batch, "student", keep_logits=self.spec.rewrite is not None)
        if self.spec.rewrite is not None:
            sampler = Sampler(self.generate, self.eos_id, self.pad_id, self.vocab_size, self.max_new_tokens,
                              self.micro_batch)
            samples, self.stats = self.spec.rewrite(samples, student, teacher, sampler, logits)
        return samples

    def __call__(self, batch: list[Example], student: PreTrainedModel, teacher: PreTrainedModel | None,
                 step: int = 1, total_steps: int = 1) -> tuple[list[Example], str]:
        """The batch to train on and its source name."""
        source = self.choose(step, total_steps, len(batch))
        self.counts[source] += 1
        if source == "ground_truth":
            return batch, source
        if source == "replay":
            return self.adaptive.replay(len(batch)), source
        # only the models this source samples from (and the rewrite step's teacher) are gathered
        samples_student = source in ("student", "both")
        uses_teacher = source in ("teacher", "both") or (samples_student and self.spec.rewrite is not None)
        with self.gather(student if samples_student else None, teacher if uses_teacher else None) as present:
            student, teacher = (given if whole is None else whole for given, whole in zip((student, teacher), present))
            if source == "teacher":
                return self.sample(teacher, batch, "teacher")[0], source
            if source == "both":
                half = len(batch) // 2
                return self.sample(teacher, batch[:half], "teacher")[0] + self.student_samples(batch[half:], student,
                                                                                             teacher), source
            samples = self.student_samples(batch, student, teacher)
        if self.adaptive is not None:
            self.adaptive.store(samples)
        return samples, source
