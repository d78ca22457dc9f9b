"""SCRG, MGSR's sequence-level revision of student samples (MGSR spec section 1).

Given a batch of responses the student sampled:

1. one no-grad forward of teacher and student over (prompt, response) gives ``p_i`` and ``q_i`` at
   every response position; the student's ``q_i`` are the logits the samples were drawn from when
   the batch source kept them (same model, same mode: the pass is not repeated);
2. the teacher's token ``t_i`` (argmax of ``p_i``, or a sample from it) and the semantic cognitive
   difference ``d_i`` (``KL(p_i || q_i)`` by default; reverse KL or JSD as options);
3. the error position ``j``: the argmax of ``d_i`` over positions where the response disagrees with
   the teacher (``y_i != t_i``; EOS is a real position, padding is not); a response without one is
   kept unchanged and counted as uncorrected;
4. the correction ``y_j := t_j`` with the prefix ``y_<j`` kept, and the student re-generates from
   ``(x, y_<j, t_j)`` with the same sampling settings, until EOS or the length limit (the limit counts
   the kept prefix: a revised response is never longer than a sampled one);
5. ``rounds`` repetitions, each looking only past the previous correction; ``rounds = 0`` disables it.

Rows are revised together: their corrected prefixes are left-padded and generated in one batch per
round. The positions and corrections are deterministic given the models (argmax mode), so the
batched result equals the row-by-row one whenever generation is deterministic (tested).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from mgsr_bench.data.collate import Example, collate, token_batch
from mgsr_bench.losses import divergences as D
from mgsr_bench.models.heads import selected_logits
from mgsr_bench.sampling.sources import Sampler

TEACHER_TOKENS = ("argmax", "sample")
DIFFERENCES = ("fkl", "rkl", "jsd")


@dataclass(frozen=True)
class Correction:
    """One row's correction: response position ``j``, the teacher token put there and ``d_j``."""

    position: int
    token: int
    difference: float


@dataclass(frozen=True)
class SCRG:
    """Sequence correction and re-generation with the spec's defaults (each a "decided" option)."""

    rounds: int = 1
    teacher_token: str = "argmax"
    difference: str = "fkl"
    temperature: float = 1.0  # of p and q used for t_i and d_i

    def __post_init__(self) -> None:
        if self.rounds < 0:
            raise ValueError(f"rounds must be >= 0, got {self.rounds}")
        if self.teacher_token not in TEACHER_TOKENS:
            raise ValueError(f"teacher_token must be one of {', '.join(TEACHER_TOKENS)}, got {self.teacher_token!r}")
        if self.difference not in DIFFERENCES:
            raise ValueError(f"difference must be one of {', '.join(DIFFERENCES)}, got {self.difference!r}")

    def _differences(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        if self.difference == "fkl":
            return D.forward_kl(student_logits, teacher_logits, self.temperature)
        if self.difference == "rkl":
            return D.reverse_kl(student_logits, teacher_logits, self.temperature)
        return D.generalized_jsd(student_logits, teacher_logits, 0.5, self.temperature)

    @torch.no_grad()
    def find_corrections(self, examples: list[Example], student: PreTrainedModel, teacher: PreTrainedModel,
                         starts: list[int], pad_id: int, vocab_size: int, micro_batch: int = 8,
                         student_logits: list[torch.Tensor] | None = None) -> list[Correction | None]:
        """Per row, the correction at or after response position ``starts[row]``, or None when nothing disagrees.

        ``student_logits`` (per row, one row of logits per response token) replace the student's
        forward when given.
        """
        device = next(student.parameters()).device
        was_training = student.training
        student.eval()  # no dropout: the distributions SCRG compares are the model's, not a noisy draw
        try:
            return self._find(examples, student, teacher, starts, pad_id, vocab_size, micro_batch, device,
                              student_logits)
        finally:
            student.train(was_training)

    def _find(self, examples: list[Example], student: PreTrainedModel, teacher: PreTrainedModel, starts: list[int],
              pad_id: int, vocab_size: int, micro_batch: int, device: torch.device,
              student_logits: list[torch.Tensor] | None) -> list[Correction | None]:
        out: list[Correction | None] = []
        for first in range(0, len(examples), micro_batch):
            rows = examples[first: first + micro_batch]
            batch = {k: v.to(device) for k, v in collate(rows, pad_id).items()}
            inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
            mask, tokens = token_batch(batch)  # logit positions that predict a response token
            if student_logits is None:
                s = selected_logits(student, inputs, mask, vocab_size)
            else:  # mask selects response positions row by row, in order
                s = torch.cat(student_logits[first: first + len(rows)]).to(device)
            t = selected_logits(teacher, inputs, mask, vocab_size)
            if self.teacher_token == "argmax":
                teacher_tokens = t.argmax(-1)
            else:
                teacher_tokens = torch.multinomial(F.softmax(t / self.temperature, -1), 1).squeeze(-1)
            d = self._differences(s, t)
            # response index of every selected position, and the row it belongs to
            row = mask.nonzero()[:, 0]
            index = mask.long().cumsum(1)[mask] - 1
            start = torch.tensor(starts[first: first + len(rows)], device=device)[row]
            candidate = (tokens.targets != teacher_tokens) & (index >= start)
            grid = torch.full(mask.shape, float("-inf"), device=device)
            grid[mask] = d.masked_fill(~candidate, float("-inf"))
            best = grid.argmax(1)  # logit position of j per row
            found = grid.gather(1, best.unsqueeze(1)).squeeze(1) > float("-inf")
            lookup = torch.full(mask.shape, -1, dtype=torch.long, device=device)
            lookup[mask] = torch.arange(mask.sum().item(), device=device)
            flat = lookup.gather(1, best.unsqueeze(1)).squeeze(1).clamp(min=0)
            for ok, j, tok, diff in zip(found.tolist(), index[flat].tolist(), teacher_tokens[flat].tolist(),
                                        d[flat].tolist()):
                out.append(Correction(j, tok, diff) if ok else None)
        return out

    def __call__(self, samples: list[Example], student: PreTrainedModel, teacher: PreTrainedModel,
                 sampler: Sampler, student_logits: list[torch.Tensor] | None = None
                 ) -> tuple[list[Example], dict[str, float]]:
        """The revised samples and the step's figures: fraction corrected, mean relative position and d of j,
        and the seconds SCRG took.

        ``student_logits``: the logits each sampled token was drawn from (one tensor per row), when
        the sampler kept them; the re-generations keep theirs, so no round runs a student forward.
        """
        began = time.perf_counter()
        samples = list(samples)
        active = list(range(len(samples)))
        starts = [0] * len(samples)
        corrected: set[int] = set()
        rel_positions: list[float] = []
        differences: list[float] = []
        logits = None if student_logits is None else list(student_logits)
        for _ in range(self.rounds):
            if not active:
                break
            found = self.find_corrections([samples[i] for i in active], student, teacher,
                                          [starts[i] for i in active], sampler.pad_id, sampler.vocab_size,
                                          sampler.micro_batch,
                                          None if logits is None else [logits[i] for i in active])
            regenerate: list[tuple[int, list[int], int]] = []  # (row, new response prefix, token budget left)
            still = []
            for i, c in zip(active, found):
                if c is None:
                    continue
                e = samples[i]
                corrected.add(i)
                rel_positions.append(c.position / len(e.response_ids))
                differences.append(c.difference)
                prefix = e.response_ids[: c.position] + [c.token]
                budget = sampler.max_new_tokens - len(prefix)
                samples[i] = Example(e.prompt_ids, prefix, origin=e.origin)
                starts[i] = len(prefix)
                if logits is not None:  # q at j is conditioned on the kept prefix only: still valid
                    logits[i] = logits[i][: len(prefix)]
                if c.token != sampler.eos_id and budget > 0:
                    regenerate.append((i, prefix, budget))
                if c.token != sampler.eos_id:
                    still.append(i)
            if regenerate:
                prompts = [samples[i].prompt_ids + prefix for i, prefix, _ in regenerate]
                out = sampler.generate(student, prompts, [b for _, _, b in regenerate], logits is not None)
                for k, ((i, prefix, _), cont) in enumerate(zip(regenerate, out.tokens)):
                    samples[i] = Example(samples[i].prompt_ids, prefix + cont, origin=samples[i].origin)
                    if logits is not None:
                        logits[i] = torch.cat([logits[i], out.logits[k].to(logits[i].device)])
            active = [i for i in still if starts[i] < len(samples[i].response_ids)]
        stats = {"scrg_corrected": len(corrected) / len(samples) if samples else 0.0}
        if rel_positions:
            stats["scrg_rel_position"] = sum(rel_positions) / len(rel_positions)
            stats["scrg_difference"] = sum(differences) / len(differences)
        stats["scrg_seconds"] = time.perf_counter() - began
        return samples, stats
