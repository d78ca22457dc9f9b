"""What each command asks of the pipeline (:mod:`mgsr_bench.runs`, :mod:`mgsr_bench.scoring`,
:mod:`mgsr_bench.reports`), as plain values.

A request holds the options as given: the pipeline checks them, in a fixed order and before any
compute, so that the command line, a script and a test get the same refusals. Nothing here imports
torch, which keeps ``mgsr-bench --help`` fast.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from mgsr_bench.config import DEFAULT_SEEDS, PROTOCOL_TOKENIZER

CHECKPOINT_EVERY = 100  # steps between the checkpoints run and train write when the recipe sets none


@dataclasses.dataclass(frozen=True)
class EvalOptions:
    """How models are scored: the protocol's generation settings (each ``None`` takes the suite's or
    the protocol's default) and the lm-eval tasks to add to every record."""

    seeds: str = ",".join(map(str, DEFAULT_SEEDS))  # sampling seeds, "10,20,30"
    greedy: bool = False
    batch_size: int = 64
    temperature: float = 1.0
    max_length: int = 512
    max_prompt: int = 256
    bos: bool = False
    max_new_tokens: int | None = None
    no_repeat_ngram_size: int | None = None
    lm_eval: tuple[str, ...] = ()  # task names; empty: none
    lm_eval_limit: int | None = None


@dataclasses.dataclass(frozen=True)
class RunRequest:
    """``run``: the tiny suite's teacher and one student per recipe and training seed, all scored."""

    out: Path
    methods: str  # comma-separated recipe names
    evaluation: EvalOptions
    quick: bool = False
    steps: int | None = None
    deterministic: bool = False
    sets: tuple[str, ...] = ()  # KEY=VALUE method-option overrides
    train_seeds: str | None = None
    teacher_cache_k: int | None = None  # distillation methods read a top-k teacher cache on ground-truth batches (rows METHOD+cache)
    report_to: str | None = None  # comma-separated trackers (mgsr_bench.train.tracking.TRACKERS)


@dataclasses.dataclass(frozen=True)
class TrainRequest:
    """``train``: one recipe's student, on a registered pair, on named models and data, or on the
    tiny suite's (all of them ``None``)."""

    recipe: str
    out: Path | None = None  # None: runs/train-RECIPE
    pair: str | None = None
    teacher: str | None = None
    student: str | None = None
    train_data: str | None = None
    valid_data: str | None = None
    steps: int | None = None
    train_seeds: str | None = None
    quick: bool = False
    trust_remote_code: bool = False
    deterministic: bool = False
    checkpoint_every: int | None = None
    teacher_cache: Path | None = None  # read the teacher's cached distributions instead of running it
    teacher_cache_rest: str = "bucket"
    report_to: str | None = None  # comma-separated trackers (mgsr_bench.train.tracking.TRACKERS)


@dataclasses.dataclass(frozen=True)
class CacheTeacherRequest:
    """``cache-teacher``: the teacher's top-k distributions on a training set, written once."""

    out: Path
    teacher: str | None = None  # None: the tiny suite's (with its tokenizer and train split)
    train_data: str | None = None
    k: int = 64
    temperature: float = 1.0
    dtype: str = "float16"
    long_prompts: str = "drop"
    batch_size: int = 16
    quick: bool = False
    trust_remote_code: bool = False


@dataclasses.dataclass(frozen=True)
class EvalRequest:
    """``eval``: saved models scored on the tiny suite's splits or on ``data`` (NAME=PATH each)."""

    models: tuple[str, ...]
    out: Path
    evaluation: EvalOptions
    data: tuple[str, ...] = ()
    pair: str | None = None
    protocol_tokenizer: str = PROTOCOL_TOKENIZER
    label: str | None = None
    quick: bool = False
    trust_remote_code: bool = False
    dtype: str = "float32"


@dataclasses.dataclass(frozen=True)
class AgreementRequest:
    """``agreement``: teacher-forced figures of each model against the teacher on reference responses."""

    models: tuple[str, ...]
    teacher: str | None = None  # None: the tiny suite's
    data: str | None = None  # None: the tiny suite's ``split``
    split: str = "test"
    limit: int | None = None
    family: str | None = None
    threshold: float = 1e-3
    batch_size: int = 8
    quick: bool = False
    trust_remote_code: bool = False
    dtype: str = "float32"
    output: str | None = None


@dataclasses.dataclass(frozen=True)
class StoreFilter:
    """Which records of a results store to read (each ``None``: no restriction)."""

    pair: str | None = None  # suite name or TEACHER->STUDENT
    commit: str | None = None  # prefix
    since: str | None = None  # ISO date or date-time
    until: str | None = None

    def as_kwargs(self) -> dict[str, str | None]:
        """The filters as :func:`mgsr_bench.results.load_records` takes them."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class LeaderboardRequest:
    """``leaderboard``: the methods x datasets table of a store's records, printed and written."""

    folder: str
    format: str = "markdown"
    metric: str = "rougeL"
    reference: str | None = None
    labels: list[str] | None = None  # rows to keep (labels or method names); None: all
    datasets: list[str] | None = None  # columns to keep; None: all
    filters: StoreFilter = dataclasses.field(default_factory=StoreFilter)
    reported: str | None = None  # TEACHER->STUDENT whose papers' rows to add
    reported_file: str | None = None  # None: leaderboards/reported.yaml
    output: str | None = None  # a file to write the table to
    write: str | None = None  # a folder to write every format and the figures into


@dataclasses.dataclass(frozen=True)
class CompareRequest:
    """``compare``: the records under ``new`` against those under ``against``, per row and dataset."""

    new: str
    against: str
    metric: str = "rougeL"
    tolerance: float = 0.5
    k: float = 2.0
    output: str | None = None
    allow_missing: bool = False  # rows of the baseline absent from the new records do not fail the gate


@dataclasses.dataclass(frozen=True)
class HistoryRequest:
    """``history``: one metric across commits from a store's records."""

    folder: str
    labels: list[str] | None = None
    dataset: str | None = None
    metric: str = "rougeL"
    filters: StoreFilter = dataclasses.field(default_factory=StoreFilter)


@dataclasses.dataclass(frozen=True)
class PlanRequest:
    """``plan``: the per-GPU memory of training a registered pair; each ``None`` takes the pair's."""

    pair: str
    method: str = "mgsr"
    gpus: int | None = None
    gpu_mem: float | None = None  # GiB
    strategy: str | None = None
    micro_batch: int | None = None
    seq_len: int = 512
    checkpointing: bool | None = None
