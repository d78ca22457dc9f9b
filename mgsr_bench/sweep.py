"""Comparison grids: recipes x suites or pairs x training seeds x overrides, each cell one
train-and-evaluate job writing its record into one store.

A grid file (YAML)::

    out: runs/grid                 # the store: every cell's records, models, logs under it
    recipes: [sft, kd, mgsr]
    suites: [tiny]                 # and/or pairs, each with its data:
    pairs:
      gpt2-xl-gpt2: {train: train.jsonl, valid: valid.jsonl, eval: {dolly: dolly.jsonl}}
    train_seeds: [1, 2, 3]
    overrides: [{}, {steps: 3000, temperature: 2.0}]   # training settings and method options
    seeds: 10,20,30,40,50          # sampling seeds of the evaluation
    executor: local                # local (one cell after another), slurm, or submitit-local
    slurm: {partition: gpu, timeout_min: 600}          # beside each pair's own gpus

A cell is a command line (``mgsr-bench run`` on a suite; ``train`` then ``eval`` on a pair, under
``accelerate launch`` when the pair wants several GPUs), so the local and the Slurm executor run the
same thing. Every grid is checked whole before any job starts. A cell whose record is there is
skipped, so a sweep submitted again after any failure runs what is missing, and a cell killed part
way resumes from its checkpoints (the commands do). An override cell trains a recipe written into
``OUT/recipes`` (``kd+o1.yaml``: the recipe with the override merged), so its row is ``kd+o1``.
``--status`` shows each cell as done, running, failed (with its log and failing line) or waiting.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from mgsr_bench.errors import UserError
from mgsr_bench.outputs import process_alive

EXECUTORS = ("local", "slurm", "submitit-local")
DEFAULT_TIMEOUT_MIN = 24 * 60  # per cell, unless the grid's slurm: says otherwise
GRID_KEYS = ("out", "recipes", "suites", "pairs", "train_seeds", "overrides", "seeds", "executor", "slurm")
SLURM_KEYS = ("partition", "timeout_min", "mem_gb", "cpus_per_task", "gpus_per_node", "array_parallelism",
              "account", "qos", "constraint")
PAIR_DATA_KEYS = ("train", "valid", "eval")


@dataclasses.dataclass(frozen=True)
class Target:
    """Where a cell trains: a suite (``run``), or a registered pair with its data (``train`` + ``eval``)."""

    name: str
    pair: Any = None  # the registered Pair, or None for a suite
    data: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Cell:
    """One train-and-evaluate job: its record's path, its log, and the commands that make them."""

    target: str
    label: str
    folder: Path  # the target's output folder (records/, models/ under it)
    # each command line, with the file whose presence says it already ran (None: the command skips itself)
    commands: tuple[tuple[tuple[str, ...], Path | None], ...]
    gpus: int = 0

    @property
    def record(self) -> Path:
        return self.folder / "records" / f"{self.label}.json"

    @property
    def log(self) -> Path:
        return self.folder / "logs" / f"{self.label}.log"

    @property
    def marker(self) -> Path:
        return self.folder / "logs" / f"{self.label}.running"


@dataclasses.dataclass(frozen=True)
class Grid:
    out: Path
    cells: tuple[Cell, ...]
    executor: str
    slurm: dict[str, Any]


def _list(raw: dict[str, Any], key: str, kind: type, path: Path) -> list[Any]:
    value = raw.get(key)
    if not isinstance(value, list) or not value:
        raise UserError(f"grid {path}: {key} must be a non-empty list")
    if not all(isinstance(v, kind) and not isinstance(v, bool) for v in value):
        raise UserError(f"grid {path}: every item of {key} must be a {kind.__name__}")
    return value


def _targets(raw: dict[str, Any], path: Path) -> list[Target]:
    from mgsr_bench.models.pairs import get_pair
    from mgsr_bench.outputs import check_plain_name
    from mgsr_bench.suite.build import SUITES

    if not raw.get("suites") and not raw.get("pairs"):
        raise UserError(f"grid {path}: name suites, pairs or both (each cell trains on one)")
    targets = []
    for name in (_list(raw, "suites", str, path) if raw.get("suites") else []):
        if name not in SUITES:
            raise UserError(f"grid {path}: unknown suite {name!r}; known suites: {', '.join(SUITES)}")
        targets.append(Target(name))
    pairs = raw.get("pairs") or {}
    if not isinstance(pairs, dict):
        raise UserError(f"grid {path}: pairs must map each pair to its data (train, valid, eval)")
    for name, data in pairs.items():
        pair = get_pair(str(name))
        check_plain_name(pair.name, f"grid {path}: pair {pair.name!r} names a folder under out, so its name")
        if not isinstance(data, dict) or set(data) != set(PAIR_DATA_KEYS) or not isinstance(data["eval"], dict) \
                or not data["eval"]:
            raise UserError(f"grid {path}: pair {name!r} needs train, valid and eval (a mapping NAME: FILE)")
        for file in (data["train"], data["valid"], *data["eval"].values()):
            if not Path(str(file)).is_file():
                raise UserError(f"grid {path}: pair {name!r}: data file not found: {file}")
        for dataset in data["eval"]:
            check_plain_name(str(dataset), f"grid {path}: pair {name!r}: eval dataset name")
        targets.append(Target(pair.name, pair, data))
    return targets


def _override_recipes(recipes: list[str], overrides: list[dict[str, Any]], out: Path,
                      path: Path) -> tuple[list[list[str]], dict[Path, str]]:
    """Per override, the recipe each recipe name becomes: itself for ``{}``, else the recipe file
    ``OUT/recipes/NAME+oI.yaml`` with the override merged; and the text of each such file (every
    one checked now, written once the whole grid has passed its checks)."""
    from mgsr_bench.config import TrainConfig, load_recipe
    from mgsr_bench.methods import option_names

    train_keys = {f.name for f in dataclasses.fields(TrainConfig)}
    loaded = {name: load_recipe(name) for name in recipes}
    result, files = [], {}
    for i, override in enumerate(overrides):
        if not override:
            result.append(list(recipes))
            continue
        taken = set(train_keys).union(*(option_names(r.method) for r in loaded.values()))
        unknown = sorted(set(map(str, override)) - taken)
        if unknown:
            raise UserError(f"grid {path}: override {i}: {unknown[0]!r} is neither a training setting nor an option "
                            "of any chosen recipe's method")
        names = []
        for name in recipes:
            file, text = _recipe_file(loaded[name], override, i, out)
            files[file] = text
            names.append(str(file))
        result.append(names)
    return result, files


def _recipe_file(recipe: Any, override: dict[str, Any], index: int, out: Path) -> tuple[Path, str]:
    """``recipe`` with ``override`` merged (its method's options into ``options``, training settings
    into ``train``; another method's options pass it by), checked as a recipe is: its path under
    ``out`` and its text."""
    import yaml

    from mgsr_bench.config import TrainConfig, train_config
    from mgsr_bench.methods import get_method, option_names

    names, settings = option_names(recipe.method), {f.name for f in dataclasses.fields(TrainConfig)}
    options = {**recipe.options, **{k: v for k, v in override.items() if k in names}}
    train = {**recipe.train, **{k: v for k, v in override.items() if k in settings and k not in names}}
    where = f"override {index} of recipe {recipe.name!r}"
    try:
        get_method(recipe.method, **options)
    except (TypeError, ValueError, UserError) as e:
        raise UserError(f"{where}: {e}") from None
    train_config(train, where=where)
    text = yaml.safe_dump({"method": recipe.method, "options": options, "train": train,
                           "description": f"{recipe.name} with override {index} of a sweep grid"}, sort_keys=True)
    return out / "recipes" / f"{recipe.name}+o{index}.yaml", text


def _launcher(pair: Any) -> list[str]:
    """How a cell starts ``mgsr-bench``: ``accelerate launch`` on the pair's GPUs where it wants several."""
    if pair is not None and pair.gpus > 1 and pair.accelerate_config is not None:
        return ["accelerate", "launch", "--config_file", str(pair.accelerate_config), "--num_processes",
                str(pair.gpus), "-m", "mgsr_bench"]
    return [sys.executable, "-m", "mgsr_bench"]


def _cell(target: Target, recipe: str, seed: int, out: Path, evaluation_seeds: str) -> Cell:
    """The cell of ``recipe`` (a name or an override's recipe file) at ``seed`` on ``target``."""
    from mgsr_bench.config import load_recipe
    from mgsr_bench.pipeline import resolve_recipe, seeded_runs

    loaded = load_recipe(recipe)
    label = seeded_runs(loaded.name, resolve_recipe(loaded).train.seed, (seed,))[0].label
    folder = out / target.name
    base = [sys.executable, "-m", "mgsr_bench"]
    if target.pair is None:
        quick = ["--quick"] if target.name == "tiny-quick" else []
        run = [*base, "run", "--methods", recipe, "--train-seeds", str(seed), "--seeds", evaluation_seeds,
               "--out", str(folder), *quick]
        return Cell(target.name, label, folder, ((tuple(run), None),))
    data = target.data
    model = folder / "models" / label
    train = [*_launcher(target.pair), "train", recipe, "--pair", target.pair.name, "--train-data",
             str(data["train"]), "--valid-data", str(data["valid"]), "--train-seeds", str(seed),
             "--out", str(folder / "models" / loaded.name)]
    evaluate = [*base, "eval", str(model), "--pair", target.pair.name, "--label", label, "--seeds", evaluation_seeds,
                "--out", str(folder)] + [a for name, file in data["eval"].items() for a in ("--data", f"{name}={file}")]
    return Cell(target.name, label, folder, ((tuple(train), model / "training.json"), (tuple(evaluate), None)),
                target.pair.gpus)
def load_grid(path: str | Path) -> Grid:
    """The grid in ``path``, every axis checked, or one line naming what is wrong."""
    from mgsr_bench.config import read_yaml
    from mgsr_bench.pipeline import seed_list

    path = Path(path)
    raw = read_yaml(path, "grid")
    if not isinstance(raw, dict):
        raise UserError(f"grid {path}: expected a mapping with recipes, suites or pairs, train_seeds")
    unknown = sorted(set(raw) - set(GRID_KEYS))
    if unknown:
        raise UserError(f"grid {path}: unknown key {unknown[0]!r}; valid keys: {', '.join(GRID_KEYS)}")
    out = Path(str(raw.get("out") or "runs/sweep"))
    recipes = _list(raw, "recipes", str, path)
    targets = _targets(raw, path)
    seeds = _list(raw, "train_seeds", int, path)
    seed_list(",".join(map(str, seeds)), f"grid {path}: train_seeds")  # range and repeats, as --train-seeds
    overrides = raw.get("overrides", [{}])
    if not isinstance(overrides, list) or not overrides or not all(isinstance(o, dict) for o in overrides):
        raise UserError(f"grid {path}: overrides must be a non-empty list of mappings ({{}}: none)")
    executor = str(raw.get("executor", "local"))
    if executor not in EXECUTORS:
        raise UserError(f"grid {path}: unknown executor {executor!r}; choose from {', '.join(EXECUTORS)}")
    slurm = raw.get("slurm") or {}
    if not isinstance(slurm, dict) or set(slurm) - set(SLURM_KEYS):
        raise UserError(f"grid {path}: slurm takes {', '.join(SLURM_KEYS)}")
    per_override, files = _override_recipes(recipes, overrides, out, path)
    evaluation_seeds = str(raw.get("seeds", "10,20,30,40,50"))
    seed_list(evaluation_seeds, f"grid {path}: seeds")
    from mgsr_bench.data.jsonl import write_atomic

    for file, text in files.items():  # the whole grid passed its checks: the override recipes can be read
        write_atomic(file, text)
    cells = tuple(_cell(target, recipe, seed, out, evaluation_seeds)
                  for target, names in itertools.product(targets, per_override) for recipe in names for seed in seeds)
    return Grid(out, cells, executor, slurm)


# --- running cells ---------------------------------------------------------------------------------
def run_cell(cell: Cell) -> None:
    """Run a cell's commands, output appended to its log, a marker (host and process) there while it
    runs; raises when a command fails (the log's last line says ``exit N``)."""
    cell.log.parent.mkdir(parents=True, exist_ok=True)
    cell.marker.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}), encoding="utf-8")
    try:
        with open(cell.log, "a", encoding="utf-8") as log:
            for argv, done in cell.commands:
                if done is not None and done.exists():
                    continue
                log.write(f"$ {' '.join(argv)}\n")
                log.flush()
                code = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT,
                                      env={**os.environ, "TOKENIZERS_PARALLELISM": "false"}).returncode
                if code != 0:
                    log.write(f"exit {code}\n")
                    raise RuntimeError(f"cell {cell.target}/{cell.label} failed (exit {code}): see {cell.log}")
            log.write("exit 0\n")
    finally:
        cell.marker.unlink(missing_ok=True)


def pending(grid: Grid) -> list[Cell]:
    """The cells whose record is not there yet."""
    return [cell for cell in grid.cells if not cell.record.is_file()]


def submit(grid: Grid) -> tuple[list[str], bool]:
    """Run or submit every pending cell: a line per cell that failed (local executors) or was
    submitted (slurm), and whether any failed."""
    cells = pending(grid)
    if grid.executor == "local":
        failed = []
        for cell in cells:
            try:
                run_cell(cell)
            except RuntimeError as e:
                failed.append(str(e))
        return failed, bool(failed)
    return _submitit(grid, cells)


def _submitit(grid: Grid, cells: list[Cell]) -> tuple[list[str], bool]:
    """Submit ``cells`` through submitit (a Slurm job array per GPU count, or its local executor, which
    the tests use), record the job ids in ``OUT/jobs.json``; the local executor is waited for."""
    try:
        import submitit
    except ImportError:
        raise UserError("the slurm executors need submitit: pip install submitit") from None
    local = grid.executor == "submitit-local"
    executor = submitit.AutoExecutor(folder=grid.out / "submitit", cluster="local" if local else "slurm")
    jobs = []
    for gpus, group in itertools.groupby(sorted(cells, key=lambda c: c.gpus), key=lambda c: c.gpus):
        settings = {"timeout_min": DEFAULT_TIMEOUT_MIN,  # submitit's own default is 5 minutes
                    **{k: v for k, v in grid.slurm.items() if k in ("timeout_min", "mem_gb", "cpus_per_task")}}
        slurm = {f"slurm_{k}": v for k, v in grid.slurm.items()
                 if k in ("partition", "account", "qos", "constraint", "array_parallelism") and not local}
        executor.update_parameters(gpus_per_node=gpus, **settings, **slurm)
        group = list(group)
        jobs += list(zip(group, executor.map_array(run_cell, group)))
    ids = {f"{cell.target}/{cell.label}": job.job_id for cell, job in jobs}
    from mgsr_bench.data.jsonl import write_atomic

    write_atomic(grid.out / "jobs.json", json.dumps(ids, indent=2))
    if not local:
        return [f"submitted {key}: job {job_id}" for key, job_id in ids.items()], False
    failed = []
    for cell, job in jobs:
        try:
            job.result()
        except Exception:  # the job's own exception, re-raised by submitit: its logs name the cause
            failed.append(f"cell {cell.target}/{cell.label} failed: see {cell.log} and {job.paths.stderr}")
    return failed, bool(failed)


# --- status --------------------------------------------------------------------------------------
def _last_line(log: Path) -> str:
    lines = [ln.strip() for ln in log.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower() and not ln.startswith("$")]
    return (errors or lines or [""])[-1]


def cell_status(cell: Cell) -> tuple[str, str]:
    """``(state, detail)``: done, running (on another host: said so), failed (the failing line), waiting."""
    if cell.record.is_file():
        return "done", ""
    if cell.marker.is_file():
        try:
            marker = json.loads(cell.marker.read_text(encoding="utf-8"))
        except ValueError:
            marker = {}
        if marker.get("host") != socket.gethostname():
            return "running", f"on {marker.get('host')}"
        if process_alive(int(marker.get("pid", 0) or 0)):
            return "running", ""
        return "failed", "killed while running (its process is gone)"
    if cell.log.is_file():
        lines = cell.log.read_text(encoding="utf-8", errors="replace").splitlines()
        if lines and lines[-1] == "exit 0":
            return "failed", f"its commands ended without writing {cell.record}"
        if lines and lines[-1].startswith("exit "):
            return "failed", _last_line(cell.log)
        if lines:  # no exit status: stopped from outside (a time limit, a signal)
            return "failed", "stopped before it ended (a time limit or a signal)"
    return "waiting", ""


def status_table(grid: Grid) -> tuple[str, dict[str, int]]:
    """One line per cell (state, log, failing line) and the count of each state."""
    lines, counts = [], {}
    for cell in grid.cells:
        state, detail = cell_status(cell)
        counts[state] = counts.get(state, 0) + 1
        log = str(cell.log) if cell.log.exists() else "-"
        lines.append(f"{cell.target}/{cell.label}: {state}  log {log}" + (f"  {detail}" if detail else ""))
    return "\n".join(lines), counts
