"""Build (once) and load the tiny suite: data, tokenizer, teacher and SFT-initialised student.

Everything is derived from a :class:`SuiteConfig` and cached under
``$MGSR_BENCH_CACHE`` (default ``~/.cache/mgsr-bench``) in a folder named by the config's hash, so
a second run reuses the trained teacher and a changed config builds a new suite. A build happens
in a temporary folder renamed into place when complete: a killed build leaves nothing that looks
finished, and one ended by Ctrl-C or SIGTERM removes its temporary folder. The suite is a
single-process artefact: a process started by a launcher (``accelerate launch``, torchrun) builds
it in a process of its own with the launch's settings removed, since the build's training would
otherwise run on the launched engine (ZeRO-3 would leave the saved weights as empty partitions,
bf16 would change the teacher).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from mgsr_bench.config import config_hash, train_config
from mgsr_bench.data.collate import tokenize_records
from mgsr_bench.data.jsonl import read_records, write_atomic, write_records
from mgsr_bench.models import count_parameters, load_model, load_tokenizer, weights_digest
from mgsr_bench.signals import sigterm_as_exit
from mgsr_bench.suite.tasks import generate_suite_data
from mgsr_bench.suite.tokenizer import train_tokenizer

# Bump when the data generator, tokenizer training or build procedure changes what a config builds,
# so that caches made by older code are not silently reused.
SUITE_CODE_VERSION = 3
# Bump when tokenizer training or the teacher's build changes what the same teacher data trains:
# a build may keep the shipped tokenizer and teacher only while their inputs (teacher_inputs) match.
TEACHER_CODE_VERSION = 1
SPLITS = ("train", "teacher", "valid", "test", "shifted")
EVAL_SPLITS = ("test", "shifted")
# CPU threads the build trains with, whatever the machine: the thread count changes how the matrix
# products split their sums, so builds with 1 and 2 threads give different models. Pinned, one machine
# builds the same suite whatever its thread setting, and the machine that built the shipped models
# (mgsr_bench/suite/shipped) rebuilds them to the bit; other machines differ, which is why they are
# shipped. One thread: a build is on no run's path (the suite ships), and it leaves a 2-core machine's
# other core free.
BUILD_THREADS = 1


@dataclass(frozen=True)
class ModelShape:
    """A LLaMA-architecture decoder shape (tied embeddings)."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int

    def config(self, vocab_size: int) -> LlamaConfig:
        return LlamaConfig(vocab_size=vocab_size, hidden_size=self.hidden_size,
                           num_hidden_layers=self.num_hidden_layers, num_attention_heads=self.num_attention_heads,
                           num_key_value_heads=self.num_attention_heads, intermediate_size=self.intermediate_size,
                           max_position_embeddings=512, tie_word_embeddings=True, bos_token_id=0, eos_token_id=0,
                           pad_token_id=0)

    def build(self, vocab_size: int, seed: int) -> LlamaForCausalLM:
        torch.manual_seed(seed)
        return LlamaForCausalLM(self.config(vocab_size))


@dataclass(frozen=True)
class SuiteConfig:
    """Everything that determines a tiny suite; its hash names the cache folder."""

    name: str = "tiny"
    seed: int = 0
    # The distillation set, one response per prompt: a twelfth of the teacher's prompts, so that the
    # teacher knows much more of each family's response distribution than the student's data shows.
    n_train: int = 2000
    n_valid: int = 300
    n_test: int = 300
    n_teacher_extra: int = 22000  # prompts only the teacher trains on (24000 teacher prompts in all)
    teacher_responses: int = 4  # responses per open-ended prompt in the teacher's training set
    references: int = 8  # references per open-ended evaluation prompt
    vocab_size: int = 1024
    teacher: ModelShape = ModelShape(192, 4, 4, 512)
    student: ModelShape = ModelShape(96, 2, 4, 256)
    # Both build stages keep their best checkpoint by validation loss: the teacher is a density model
    # of the responses, which is what distillation reads from it.
    teacher_train: dict[str, Any] = field(default_factory=lambda: {
        "steps": 2400, "micro_batch": 32, "lr": 2e-3, "eval_every": 200, "val_metric": "loss", "seed": 0})
    student_init_train: dict[str, Any] = field(default_factory=lambda: {
        "steps": 300, "micro_batch": 32, "lr": 2e-3, "eval_every": 100, "val_metric": "loss", "seed": 0})
    # Defaults every method trains with on this suite (a recipe's `train` block overrides them): one
    # stopping rule for all, validation ROUGE-L every 100 steps, stop after 3 validations without a
    # new best, keep the best; `steps` bounds the run. 16 examples a step, so that a ground-truth
    # method's row (training and evaluation) fits in 8 minutes on a 2-core CPU.
    method_train: dict[str, Any] = field(default_factory=lambda: {
        "steps": 1500, "micro_batch": 16, "lr": 1e-3, "eval_every": 100, "val_metric": "rougeL",
        "val_max_new_tokens": 128, "patience": 3, "gen_max_new_tokens": 128})
    # Evaluation: responses are at most 120 tokens, so 128 new tokens never cut a valid one.
    max_new_tokens: int = 128
    # The protocol's no_repeat_ngram_size=6 counts the prompt too, and with digits split one per
    # token six tokens are as short as "56, 34": sorting, extraction and QA answers legitimately
    # repeat such spans from their input, so the tiny suite turns the ban off (a documented deviation).
    no_repeat_ngram_size: int = 0

    def key(self) -> str:
        """Cache folder name: the suite name plus a hash of the fields that change what is built
        (not the method and evaluation defaults) and of ``SUITE_CODE_VERSION``."""
        built = {k: v for k, v in dataclasses.asdict(self).items() if k not in _NOT_BUILT}
        return f"{self.name}-{config_hash({**built, 'code': SUITE_CODE_VERSION})}"


_NOT_BUILT = ("method_train", "max_new_tokens", "no_repeat_ngram_size")
QUICK = SuiteConfig(
    name="tiny-quick", n_train=3000, n_valid=120, n_test=60, n_teacher_extra=600, teacher_responses=2, references=4,
    vocab_size=512,
    teacher=ModelShape(128, 2, 4, 352), student=ModelShape(64, 1, 2, 176),
    teacher_train={"steps": 150, "micro_batch": 32, "lr": 3e-3, "eval_every": 150, "val_metric": "loss", "seed": 0},
    student_init_train={"steps": 40, "micro_batch": 32, "lr": 3e-3, "eval_every": 40, "val_metric": "loss", "seed": 0},
    method_train={"steps": 30, "micro_batch": 32, "lr": 2e-3, "eval_every": 30, "val_metric": "loss",
                  "gen_max_new_tokens": 64},
    max_new_tokens=64,  # a smoke test: its barely trained students rarely stop, and cut references still score
)
SUITES = {"tiny": SuiteConfig(), "tiny-quick": QUICK}


def cache_root() -> Path:
    return Path(os.environ.get("MGSR_BENCH_CACHE", Path.home() / ".cache" / "mgsr-bench"))


@dataclass
class Suite:
    """A built suite on disk."""

    root: Path
    config: SuiteConfig
    report: dict[str, Any]

    @property
    def tokenizer_dir(self) -> Path:
        return self.root / "tokenizer"

    @property
    def teacher_dir(self) -> Path:
        return self.root / "teacher"

    @property
    def student_init_dir(self) -> Path:
        return self.root / "student-init"

    def split(self, name: str) -> list[dict[str, Any]]:
        return read_records(self.root / "data" / f"{name}.jsonl")

    def pair(self) -> dict[str, Any]:
        """The pair description that goes into run records (paths relative to the suite cache), with
        the digests of the teacher's and the SFT init's weights: the suite's name comes from its
        configuration, and two builds of one configuration can differ (another thread count, another
        CPU), so the digests say whether two records were made from the same models."""
        key = self.config.key()
        return {"name": key, "teacher": f"{key}/teacher", "student": f"{key}/student-init",
                "teacher_params": self.report["teacher_params"], "student_params": self.report["student_params"],
                "teacher_weights": weights_digest(self.teacher_dir),
                "student_weights": weights_digest(self.student_init_dir)}


def suite_data(config: SuiteConfig) -> dict[str, list[dict[str, Any]]]:
    """Every split of ``config``'s data, as the build writes it."""
    return generate_suite_data(config.n_train, config.n_valid, config.n_test, config.seed,
                               references=config.references, teacher_responses=config.teacher_responses,
                               n_teacher_extra=config.n_teacher_extra)


def _train_stage(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerBase, train_rows: list[dict[str, Any]],
                 valid: list[dict[str, Any]], overrides: dict[str, Any], desc: str) -> dict[str, Any]:
    from mgsr_bench.methods import get_method
    from mgsr_bench.train import train

    cfg = train_config(overrides, where=desc)
    train_ex = tokenize_records(train_rows, tokenizer)
    valid_ex = tokenize_records(valid, tokenizer)
    result = train(model, None, tokenizer, get_method("sft"), train_ex, valid, valid_ex, cfg, desc=desc)
    metric = f"val_{cfg.val_metric}"
    # every validation point, so that suite.json shows whether the stage was still improving at its end;
    # the best is read from it (the harness's score is minus the loss when the metric is the loss)
    history = [[h["step"], h[metric]] for h in result.history if metric in h]
    return {"best_step": result.best_step, f"best_{metric}": dict(history)[result.best_step],
            "wall_time_s": round(result.wall_time_s, 1), "steps": result.steps_run, f"{metric}_history": history}


def building_folder(root: Path) -> Path:
    """The temporary sibling a build of ``root`` writes into, named for this machine and process:
    machines sharing a cache (a multi-node launch builds once per machine) can run processes of the
    same number, containers especially, and a pid alone would let one build delete another's."""
    return root.with_name(f".{root.name}.building-{socket.gethostname()}-{os.getpid()}")


def finish_suite(tmp: Path, root: Path, config: SuiteConfig, report: dict[str, Any]) -> None:
    """Write ``suite.json`` into the complete folder ``tmp`` and rename it to ``root``; where a
    concurrent build or install of the same suite finished first, keep that one."""
    write_atomic(tmp / "suite.json", json.dumps({"config": dataclasses.asdict(config), "report": report}, indent=2))
    try:
        os.replace(tmp, root)
    except OSError:
        if not (root / "suite.json").is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass(frozen=True)
class KeptTeacher:
    """A tokenizer and teacher trained from the inputs a new build would train them from (the same
    ``teacher_inputs``), which the build copies instead of training: a change on the student's side
    (the distillation set, the student, an evaluation split) costs the SFT init, not the teacher."""

    folder: Path  # holds tokenizer/ and teacher/
    report: dict[str, Any]  # the teacher_train report of the build that trained them


def teacher_inputs(config: SuiteConfig, digests: Mapping[str, str]) -> dict[str, Any]:
    """What the tokenizer and teacher are a function of: the teacher split (the tokenizer's and the
    teacher's data) and the valid split (its checkpoint choice), by ``digests`` of their text, the
    seed, vocabulary, teacher shape and training, and ``TEACHER_CODE_VERSION``."""
    return {"data": {s: digests[s] for s in ("teacher", "valid")}, "seed": config.seed,
            "vocab_size": config.vocab_size, "teacher": dataclasses.asdict(config.teacher),
            "teacher_train": config.teacher_train, "code": TEACHER_CODE_VERSION}


def build_suite(config: SuiteConfig, root: Path, kept: KeptTeacher | None = None) -> None:
    """Build every artefact of ``config`` into ``root`` (which must not exist yet), on
    ``BUILD_THREADS`` CPU threads; with ``kept``, copy its tokenizer and teacher instead of training
    them (the caller checks that they were trained from the same inputs)."""
    tmp = building_folder(root)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(BUILD_THREADS)
    try:
        t0 = time.perf_counter()
        data = suite_data(config)
        for split, rows in data.items():
            write_records(tmp / "data" / f"{split}.jsonl", rows)
        if kept is None:
            train_tokenizer((r["prompt"] + r["output"] for r in data["teacher"]), config.vocab_size, tmp / "tokenizer")
        else:
            shutil.copytree(kept.folder / "tokenizer", tmp / "tokenizer")
        tokenizer = load_tokenizer(tmp / "tokenizer")
        vocab = len(tokenizer)
        teacher = config.teacher.build(vocab, config.seed)
        student = config.student.build(vocab, config.seed + 1)
        report: dict[str, Any] = {"teacher_params": count_parameters(teacher),
                                  "student_params": count_parameters(student), "vocab_size": vocab,
                                  "cpu_kernels": torch.backends.cpu.get_cpu_capability(), "threads": BUILD_THREADS}
        teacher_plan = "kept" if kept else f"{config.teacher_train['steps']} steps"
        print(f"[mgsr-bench] building suite {config.key()} (first time only): teacher "
              f"{report['teacher_params'] / 1e6:.2f}M params, {teacher_plan}; student "
              f"{report['student_params'] / 1e6:.2f}M params, SFT init {config.student_init_train['steps']} steps",
              flush=True)
        if kept is None:
            report["teacher_train"] = _train_stage(teacher, tokenizer, data["teacher"], data["valid"],
                                                   config.teacher_train, "build: teacher")
            teacher.save_pretrained(tmp / "teacher")
        else:
            report["teacher_train"] = {**kept.report, "kept": True}
            shutil.copytree(kept.folder / "teacher", tmp / "teacher")
        report["student_init_train"] = _train_stage(student, tokenizer, data["train"], data["valid"],
                                                    config.student_init_train, "build: student SFT init")
        student.save_pretrained(tmp / "student-init")
        report["build_time_s"] = round(time.perf_counter() - t0, 1)
        finish_suite(tmp, root, config, report)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        torch.set_num_threads(threads)


def ensure_suite(config: SuiteConfig = SuiteConfig()) -> Suite:
    """Return the cached suite for ``config``: installed from the shipped models where the package
    has them (:mod:`mgsr_bench.suite.shipped`), else built first (outside the launch when this
    process was started by a launcher)."""
    from mgsr_bench.suite.shipped import install_shipped, shipped_folder

    root = cache_root() / config.key()
    shipped = shipped_folder(config)
    if not (root / "suite.json").is_file() and shipped is not None:
        install_shipped(config, shipped, root)
    elif not (root / "suite.json").is_file():
        if launch_variables(os.environ):
            _build_outside_launch(config, root)
        else:
            with sigterm_as_exit():  # a terminated build removes its temporary folder too
                build_suite(config, root)
    meta = json.loads((root / "suite.json").read_text())
    return Suite(root=root, config=config, report=meta["report"])


# What launchers export to the processes they start: accelerate's settings (engine, mixed precision,
# DeepSpeed and FSDP options) and torch.distributed's rendezvous.
_DISTRIBUTED_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                          "ROLE_RANK", "ROLE_NAME", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def launch_variables(env: Mapping[str, str]) -> list[str]:
    """The names in ``env`` that a launcher set and that would change how the build trains."""
    return sorted(k for k in env if k.startswith(("ACCELERATE_", "TORCHELASTIC_")) or k in _DISTRIBUTED_VARIABLES)


def _build_outside_launch(config: SuiteConfig, root: Path) -> None:
    """Under a launcher: the machine's first process (``LOCAL_RANK`` 0) builds the suite in a child
    process without the launch's variables, exactly as a single-process run would; the machine's
    other processes wait for it (a launcher ends them all if the build fails). Ended by Ctrl-C or
    SIGTERM (a launcher's way of stopping its processes), the first process ends the build with
    it, which removes its temporary folder: a build left running would hold the machine."""
    if int(os.environ.get("LOCAL_RANK", "0")) != 0:
        print(f"[mgsr-bench] waiting for this machine's first process to build suite {config.key()}", flush=True)
        while not (root / "suite.json").is_file():
            time.sleep(1.0)
        return
    env = {k: v for k, v in os.environ.items() if k not in launch_variables(os.environ)}
    proc = subprocess.Popen([sys.executable, "-m", "mgsr_bench.suite.build", json.dumps(dataclasses.asdict(config))],
                            env=env)
    try:
        with sigterm_as_exit():
            proc.wait()
    except BaseException:
        proc.terminate()  # the build's own SIGTERM handling removes its folder
        proc.wait()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"building suite {config.key()} in a process of its own failed (exit {proc.returncode}); "
                           "its error is above")


def suite_config_from_dict(d: dict[str, Any]) -> SuiteConfig:
    """The inverse of ``dataclasses.asdict`` for a :class:`SuiteConfig` (its suite.json ``config``)."""
    return SuiteConfig(**{**d, "teacher": ModelShape(**d["teacher"]), "student": ModelShape(**d["student"])})


def load_suite_models(suite: Suite) -> tuple[PreTrainedTokenizerBase, LlamaForCausalLM]:
    """The suite's tokenizer and teacher (load the student from ``suite.student_init_dir`` per run)."""
    return load_tokenizer(suite.tokenizer_dir), load_model(suite.teacher_dir)


if __name__ == "__main__":  # the child process of _build_outside_launch: python -m mgsr_bench.suite.build CONFIG_JSON
    ensure_suite(suite_config_from_dict(json.loads(sys.argv[1])))
