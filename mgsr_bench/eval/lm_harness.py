"""lm-eval tasks for any model in memory, offline where the tasks' data is local.

The model is wrapped by lm-eval's own ``HFLM`` with the tokenizer passed explicitly (without it
``HFLM`` looks the tokenizer up on the Hub). Standard task names (``hellaswag``, ``arc_easy``,
``piqa``, ``winogrande``, ...) resolve through lm-eval's registry and need their datasets on disk
or the network; ``HF_DATASETS_OFFLINE`` / ``HF_HUB_OFFLINE`` are left to lm-eval and ``datasets``.

The tiny suite ships two task YAMLs (``mgsr_bench/eval/tasks``): ``tiny_gen`` (generate until
EOS, scored by this project's ROUGE-L and exact match) and ``tiny_mc`` (log-likelihood multiple
choice). They are registered from a temporary copy whose ``{data_dir}`` points at the suite's
cached data, where ``tiny_mc.jsonl`` is derived from the test split.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mgsr_bench.errors import UserError

TASKS_DIR = Path(__file__).with_name("tasks")
TINY_TASKS = ("tiny_gen", "tiny_mc")


def multiple_choice_rows(records: list[dict[str, Any]], n_choices: int = 4, seed: int = 0) -> list[dict[str, Any]]:
    """Per record: its (first) reference among ``n_choices - 1`` other records' references of the same
    family, shuffled.

    Distractors are distinct from the reference; families with too few distinct answers are skipped.
    """
    from mgsr_bench.data.jsonl import first_reference

    rng = random.Random(seed)
    by_family: dict[str, list[str]] = defaultdict(list)
    for r in records:
        by_family[r.get("family", "")].append(first_reference(r["output"]))
    rows = []
    for r in records:
        gold = first_reference(r["output"])
        pool = sorted({o for o in by_family[r.get("family", "")] if o != gold})
        if len(pool) < n_choices - 1:
            continue
        choices = rng.sample(pool, n_choices - 1) + [gold]
        rng.shuffle(choices)
        rows.append({"prompt": r["prompt"], "choices": choices, "gold": choices.index(gold),
                     "family": r.get("family", "")})
    return rows


def tiny_task_dir(suite_data: Path, into: Path) -> Path:
    """Write the tiny suite's task YAMLs (data paths filled in) and ``tiny_mc.jsonl`` under ``into``."""
    from mgsr_bench.data.jsonl import read_records, write_atomic

    into.mkdir(parents=True, exist_ok=True)
    shutil.copy(TASKS_DIR / "utils.py", into / "utils.py")
    for name in TINY_TASKS:
        text = (TASKS_DIR / f"{name}.yaml").read_text(encoding="utf-8")
        (into / f"{name}.yaml").write_text(text.replace("{data_dir}", str(into)), encoding="utf-8")
    shutil.copy(suite_data / "test.jsonl", into / "test.jsonl")
    rows = multiple_choice_rows(read_records(suite_data / "test.jsonl"))
    write_atomic(into / "tiny_mc.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    return into


def _lm_eval():
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise UserError("--lm-eval needs lm-eval: pip install -e '.[eval]' in the clone") from None


def check_tasks(tasks: Sequence[str], tiny_suite: bool) -> list[str]:
    """The task names, checked before any compute: lm-eval installed, every name known, tiny tasks on the tiny suite."""
    _lm_eval()
    from lm_eval.tasks import TaskManager

    wanted = [t.strip() for t in tasks if t.strip()]
    if not wanted:
        raise UserError("--lm-eval needs at least one task name")
    if any(t in TINY_TASKS for t in wanted) and not tiny_suite:
        raise UserError(f"{', '.join(TINY_TASKS)} score the tiny suite: evaluate on it (no --data) or drop them")
    others = [t for t in wanted if t not in TINY_TASKS]
    if others:
        known = TaskManager().all_tasks
        unknown = [t for t in others if t not in known]
        if unknown:
            raise UserError(f"unknown lm-eval task(s) {', '.join(unknown)}; see `lm-eval ls tasks` "
                            f"(the tiny suite's: {', '.join(TINY_TASKS)})")
    return wanted


def run_lm_eval(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, tasks: Sequence[str],
                suite_data: Path | None = None, limit: int | None = None, batch_size: int = 16,
                seed: int = 0) -> dict[str, dict[str, float]]:
    """lm-eval's scores per task (``metric,filter`` keys as lm-eval reports them, stderr dropped).

    ``suite_data``: the tiny suite's data folder, needed for ``tiny_gen`` / ``tiny_mc``.
    """
    wanted = check_tasks(tasks, suite_data is not None)
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    with tempfile.TemporaryDirectory(prefix="mgsr-lm-eval-") as tmp:
        include = str(tiny_task_dir(suite_data, Path(tmp))) if suite_data is not None else None
        manager = TaskManager(include_path=include)
        was_training = model.training
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        try:
            out = simple_evaluate(model=lm, tasks=wanted, task_manager=manager, limit=limit, random_seed=seed,
                                  numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
                                  log_samples=False)
        finally:
            model.train(was_training)
    results = {}
    for task, metrics in out["results"].items():  # a metric lm-eval could not compute (NaN) is left out:
        results[task] = {k: float(v) for k, v in metrics.items()  # records hold finite numbers only
                         if isinstance(v, (int, float)) and "stderr" not in k and math.isfinite(v)}
    return results
