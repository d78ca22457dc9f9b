"""The registry of teacher/student pairs (``pairs.yaml`` here, extended by ``$MGSR_BENCH_PAIRS``)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mgsr_bench.config import read_yaml
from mgsr_bench.errors import UserError, unknown_name

BUILTIN = Path(__file__).with_name("pairs.yaml")
ACCELERATE_CONFIGS = Path(__file__).resolve().parents[1] / "launch" / "accelerate"
DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class LoraSettings:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class Pair:
    """One pair and the settings it is known to run with."""

    name: str
    teacher: str
    student: str
    dtype: str = "bfloat16"
    finetune: str = "full"  # or "lora"
    lora: LoraSettings = field(default_factory=LoraSettings)
    micro_batch: int = 8
    grad_accum: int = 1
    gpus: int = 1
    gpu_mem_gib: float = 80.0
    accelerate: str = "single_gpu"  # a file in mgsr_bench/launch/accelerate (without .yaml), or "cpu"
    gradient_checkpointing: bool = False
    # whose evaluation `eval --pair` follows: "minillm" (prompts without special tokens, as its current
    # code) or "distillm" (`tokenizer.encode(prompt)`: the tokenizer's BOS first, for LLaMA's <s>)
    reference: str = "minillm"
    note: str = ""

    @property
    def eval_bos(self) -> bool:
        """Whether evaluation puts the tokenizer's BOS before every prompt, as the reference does."""
        return self.reference == "distillm"

    @property
    def accelerate_config(self) -> Path | None:
        return None if self.accelerate == "cpu" else ACCELERATE_CONFIGS / f"{self.accelerate}.yaml"


def _pair(name: str, raw: Any, where: str) -> Pair:
    if not isinstance(raw, dict):
        raise UserError(f"{where}: pair {name!r} must be a mapping")
    allowed = [f.name for f in dataclasses.fields(Pair) if f.name != "name"]
    unknown = [k for k in raw if k not in allowed]
    if unknown:
        raise UserError(f"{where}: pair {name!r}: unknown key {unknown[0]!r}; valid keys: {', '.join(allowed)}")
    for key in ("teacher", "student"):
        if not isinstance(raw.get(key), str):
            raise UserError(f"{where}: pair {name!r} needs {key} (a Hub id or a path)")
    values = dict(raw)
    for key, kind in (("micro_batch", int), ("grad_accum", int), ("gpus", int), ("gpu_mem_gib", (int, float)),
                      ("gradient_checkpointing", bool)):
        if key in values and (not isinstance(values[key], kind) or (kind is not bool and isinstance(values[key], bool))):
            raise UserError(f"{where}: pair {name!r}: {key} must be {'true or false' if kind is bool else 'a number'}")
    if "lora" in values:
        targets = values["lora"].get("target_modules") if isinstance(values["lora"], dict) else None
        if targets is not None and not (isinstance(targets, list) and all(isinstance(t, str) for t in targets)):
            raise UserError(f"{where}: pair {name!r}: lora.target_modules must be a list of module names")
        lora = values["lora"]
        try:
            values["lora"] = LoraSettings(**{**lora, "target_modules": tuple(lora.get("target_modules",
                                                                                    LoraSettings.target_modules))})
        except TypeError as e:
            raise UserError(f"{where}: pair {name!r}: bad lora settings ({e})") from None
    pair = Pair(name=name, **values)
    if pair.dtype not in DTYPES:
        raise UserError(f"{where}: pair {name!r}: dtype must be one of {', '.join(DTYPES)}")
    if pair.reference not in ("minillm", "distillm"):
        raise UserError(f"{where}: pair {name!r}: reference must be minillm or distillm")
    if pair.finetune not in ("full", "lora"):
        raise UserError(f"{where}: pair {name!r}: finetune must be full or lora")
    if pair.accelerate_config is not None and not pair.accelerate_config.is_file():
        raise UserError(f"{where}: pair {name!r}: no accelerate config {pair.accelerate!r} "
                        f"(have: {', '.join(sorted(p.stem for p in ACCELERATE_CONFIGS.glob('*.yaml')))})")
    if min(pair.micro_batch, pair.grad_accum, pair.gpus) < 1 or pair.gpu_mem_gib <= 0:
        raise UserError(f"{where}: pair {name!r}: micro_batch, grad_accum, gpus and gpu_mem_gib must be positive")
    return pair


def _read(path: Path) -> dict[str, Pair]:
    raw = read_yaml(path, "pairs") or {}
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping of pair names to settings")
    return {str(name): _pair(str(name), value, str(path)) for name, value in raw.items()}


def load_pairs() -> dict[str, Pair]:
    """The built-in pairs, then the user's (``$MGSR_BENCH_PAIRS``), which may add or replace entries."""
    pairs = _read(BUILTIN)
    extra = os.environ.get("MGSR_BENCH_PAIRS")
    if extra:
        pairs.update(_read(Path(extra)))
    return pairs


def get_pair(name: str) -> Pair:
    pairs = load_pairs()
    if name not in pairs:
        raise unknown_name("pair", name, list(pairs))
    return pairs[name]
