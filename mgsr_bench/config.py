"""Plain-data configuration: the training settings and the YAML recipes that name a method.

A recipe is a small YAML file::

    method: kd                 # a registered method name
    description: ...           # one line for `mgsr-bench list`
    reference: ...             # where the defaults come from
    options: {temperature: 1.0}
    train: {steps: 400}        # overrides of TrainConfig fields

Recipes live in ``baselines/`` and ``methods/`` at the project root, in folders named by
``$MGSR_BENCH_RECIPES`` and in installed packages' folders (entry-point group ``mgsr_bench.recipes``),
and are loaded by name (the file stem) or by path. YAML is read with the safe loader only.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mgsr_bench.errors import UserError, unknown_name

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SEEDS = (10, 20, 30, 40, 50)  # the evaluation protocol's sampling seeds (MiniLLM, DistiLLM)
# The tokenizer the protocol's filters count tokens with: MiniLLM's data scripts filtered the released
# sets once, with GPT-2's, and every model of both papers was scored on those rows; counting with each
# evaluated model's tokenizer would score two models on different examples.
PROTOCOL_TOKENIZER = "gpt2"
RECIPE_DIRS = (PROJECT_ROOT / "baselines", PROJECT_ROOT / "methods")
RECIPE_ENTRY_POINT_GROUP = "mgsr_bench.recipes"  # installed packages' recipe folders (package_recipe_dirs)
# The recipes and the reported scores are read from the checkout, which a non-editable install
# (``pip install .``, a wheel) leaves behind: its runs would find no recipe to run.
NO_CHECKOUT = ("this install has no checkout beside it (a non-editable pip install leaves baselines/, methods/ "
               "and leaderboards/ in the clone): install from a clone with pip install -e .")
NO_RECIPES = f"{NO_CHECKOUT}, or point MGSR_BENCH_RECIPES at folders of recipes"


@dataclass
class TrainConfig:
    """Harness settings shared by every method; a recipe may override any of them."""

    steps: int = 500
    micro_batch: int = 32
    grad_accum: int = 1
    lr: float = 1e-3
    warmup_ratio: float = 0.05
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    eval_every: int = 100
    val_metric: str = "rougeL"  # "rougeL" (greedy, on val_size examples) or "loss"
    val_size: int = 120
    val_max_new_tokens: int = 64  # length limit of validation's greedy responses (val_metric rougeL)
    # stop after this many validations in a row without a new best score (0: run all `steps`); `steps`
    # stays the upper bound and the cosine schedule's length
    patience: int = 0
    # a training or validation prompt longer than 256 tokens: "drop" the example, as MiniLLM's data
    # processing does, or "truncate" its prompt, as DistiLLM's does (the cut loses `### Response:`)
    long_prompts: str = "drop"
    seed: int = 1
    mixed_precision: str = "auto"  # "auto": bf16 where the device supports it, else fp32
    loss_chunk_size: int = 1024  # response tokens per chunk of full-vocabulary logits; 0 = full logits
    gen_max_new_tokens: int = 128  # length limit of sampled training responses (student or teacher)
    gen_temperature: float = 1.0  # sampling temperature of training responses (top_k = 0, top_p = 1)
    gradient_checkpointing: bool = False  # recompute the student's layer activations in the backward pass
    checkpoint_every: int = 0  # steps between resumable checkpoints (0: none; needs a checkpoint folder)
    keep_checkpoints: int = 2  # how many of the newest checkpoints to keep
    deterministic: bool = False  # deterministic GPU kernels (torch.use_deterministic_algorithms); slower
    shard_teacher: bool = True  # under FSDP or ZeRO-3, shard the frozen teacher too (else whole on every GPU)
    # how long a process waits for the others at a collective before the run fails (torch's NCCL default
    # is 10 min: too short while the main process alone writes a 7B student to a slow shared disk)
    process_timeout_s: int = 7200

    def validate(self) -> None:
        """Reject impossible settings before any compute."""
        positive = ("steps", "micro_batch", "grad_accum", "eval_every", "val_size")
        for name in positive:
            if getattr(self, name) < 1:
                raise UserError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("gen_max_new_tokens", "val_max_new_tokens"):
            if getattr(self, name) < 1:
                raise UserError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.seed < 2**64:  # torch's generators take unsigned 64-bit seeds
            raise UserError(f"train.seed must be in [0, 2**64), got {self.seed}")
        if self.patience < 0:
            raise UserError(f"train.patience must be >= 0 (0: never stop early), got {self.patience}")
        if self.gen_temperature <= 0:
            raise UserError(f"train.gen_temperature must be > 0, got {self.gen_temperature}")
        if self.checkpoint_every < 0 or self.keep_checkpoints < 1:
            raise UserError("train.checkpoint_every must be >= 0 and train.keep_checkpoints >= 1")
        if self.process_timeout_s < 1:
            raise UserError(f"train.process_timeout_s must be >= 1, got {self.process_timeout_s}")
        if self.loss_chunk_size < 0:
            raise UserError(f"train.loss_chunk_size must be >= 0, got {self.loss_chunk_size}")
        if self.lr <= 0:
            raise UserError(f"train.lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise UserError(f"train.weight_decay must be >= 0, got {self.weight_decay}")
        if self.max_grad_norm <= 0:
            raise UserError(f"train.max_grad_norm must be > 0, got {self.max_grad_norm}")
        if not 0 <= self.warmup_ratio < 1:
            raise UserError(f"train.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.long_prompts not in ("drop", "truncate"):
            raise UserError(f"train.long_prompts must be 'drop' or 'truncate', got {self.long_prompts!r}")
        if self.val_metric not in ("rougeL", "loss"):
            raise UserError(f"train.val_metric must be 'rougeL' or 'loss', got {self.val_metric!r}")
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise UserError(f"train.mixed_precision must be auto, no, bf16 or fp16, got {self.mixed_precision!r}")

    @property
    def global_batch(self) -> int:
        """Examples per optimiser step and process; the global batch is this times the process count."""
        return self.micro_batch * self.grad_accum


def _check_keys(given: dict[str, Any], allowed: list[str], where: str) -> None:
    for key in given:
        if key not in allowed:
            hint = difflib.get_close_matches(key, allowed, n=1)
            did_you_mean = f"; did you mean {hint[0]!r}?" if hint else f"; valid keys: {', '.join(allowed)}"
            raise UserError(f"unknown key {key!r} in {where}{did_you_mean}")


def type_problem(value: Any, expected: type) -> str | None:
    """Why ``value`` cannot be a setting of type ``expected`` (bool, int, float or str), or None.

    A bool is no number (YAML's ``yes`` is one), an int serves as a float, and a float must be finite:
    ``.nan`` passes every range check (it compares false) and trains to NaN."""
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is float:
        if not numeric:
            return "must be of type float"
        return None if math.isfinite(value) else "must be a finite number"
    if expected is int:
        return None if numeric and isinstance(value, int) else "must be of type int"
    return None if isinstance(value, expected) else f"must be of type {expected.__name__}"


def train_config(overrides: dict[str, Any] | None = None, where: str = "train") -> TrainConfig:
    """A validated ``TrainConfig`` from defaults plus ``overrides`` (unknown keys name the nearest valid one)."""
    overrides = overrides or {}
    _check_keys(overrides, [f.name for f in dataclasses.fields(TrainConfig)], where)
    cfg = TrainConfig(**overrides)
    for f in dataclasses.fields(TrainConfig):
        value, expected = getattr(cfg, f.name), type(getattr(TrainConfig(), f.name))
        problem = type_problem(value, expected)
        if problem:
            raise UserError(f"{where}.{f.name} {problem}, got {value!r}")
        if expected is float:
            setattr(cfg, f.name, float(value))
    cfg.validate()
    return cfg


@dataclass
class Recipe:
    """A parsed recipe: the method name, its options and training overrides."""

    name: str
    method: str
    options: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    reference: str = ""
    path: str = ""


def config_hash(config: dict[str, Any]) -> str:
    """A short, stable hash of a JSON-serialisable config."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def recipe_dirs() -> list[Path]:
    """Where recipes are looked up by name, earlier first: ``$MGSR_BENCH_RECIPES`` (os.pathsep-separated),
    the checkout's ``baselines/`` and ``methods/``, then installed packages' folders
    (:func:`package_recipe_dirs`), which therefore cannot shadow a shipped recipe."""
    extra = [Path(p) for p in os.environ.get("MGSR_BENCH_RECIPES", "").split(os.pathsep) if p]
    return extra + [d for d in RECIPE_DIRS if d.is_dir()] + package_recipe_dirs()


def package_recipe_dirs() -> list[Path]:
    """The recipe folders that installed packages declare in the entry-point group
    :data:`RECIPE_ENTRY_POINT_GROUP`, each entry point naming an object that is the folder's path
    (so a package that adds a method through ``mgsr_bench.methods`` ships its recipes with it)."""
    from importlib.metadata import entry_points

    folders = []
    for ep in entry_points(group=RECIPE_ENTRY_POINT_GROUP):
        try:
            folder = Path(ep.load())
        except Exception as e:  # a broken plug-in must not hide behind a traceback
            raise UserError(f"cannot load recipe entry point {ep.name!r} ({ep.value}): {e}") from None
        if not folder.is_dir():
            raise UserError(f"recipe entry point {ep.name!r} ({ep.value}) names no folder: {folder}")
        folders.append(folder)
    return folders


def available_recipes() -> dict[str, Path]:
    """Recipe name -> file, over all recipe directories (earlier directories win)."""
    found: dict[str, Path] = {}
    for d in recipe_dirs():
        for p in sorted([*d.glob("*.yaml"), *d.glob("*.yml")]):
            found.setdefault(p.stem, p)
    return found


def read_yaml(path: Path, what: str) -> Any:
    """A YAML file through the safe loader; a missing or malformed file is one line naming it (and the line)."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{what} file not found: {path}") from None
    except UnicodeDecodeError:
        raise UserError(f"malformed {what} {path}: not UTF-8 text") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        problem = str(getattr(e, "problem", None) or e).strip().splitlines()[0]
        raise UserError(f"malformed {what} {path}{where}: {problem}") from None


def load_recipe(name_or_path: str) -> Recipe:
    """Load a recipe by name or path and validate its keys, its method and its training overrides."""
    from mgsr_bench.methods import get_method

    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.is_dir():
        raise UserError(f"recipe {path} is a folder: name a recipe file, or put the folder in MGSR_BENCH_RECIPES")
    if path.suffix in (".yaml", ".yml") and not path.exists():  # a path, not a name (names have no suffix)
        raise UserError(f"recipe file not found: {path} (name an existing file, or a recipe: mgsr-bench list recipes)")
    if not (path.suffix in (".yaml", ".yml") and path.is_file()):
        recipes = available_recipes()
        if not recipes and not any(d.is_dir() for d in RECIPE_DIRS):
            raise UserError(f"no recipe {name_or_path!r} to be found: {NO_RECIPES}")
        if name_or_path not in recipes:
            raise unknown_name("recipe", name_or_path, recipes)
        path = recipes[name_or_path]
    data = read_yaml(path, "recipe")
    if not isinstance(data, dict) or "method" not in data:
        raise UserError(f"malformed recipe {path}: expected a mapping with a 'method' key")
    _check_keys(data, ["method", "options", "train", "description", "reference"], f"recipe {path}")
    for key in ("options", "train"):
        if not isinstance(data.get(key) or {}, dict):
            raise UserError(f"malformed recipe {path}: '{key}' must be a mapping")
    recipe = Recipe(name=path.stem, method=str(data["method"]), options=dict(data.get("options") or {}),
                    train=dict(data.get("train") or {}), description=str(data.get("description") or ""),
                    reference=str(data.get("reference") or ""), path=str(path))
    get_method(recipe.method, **recipe.options)  # unknown method or bad options fail here, before compute
    train_config(recipe.train, f"recipe {path} train")
    return recipe
