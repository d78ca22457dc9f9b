"""Training checkpoints: everything a run needs to continue exactly where it stopped, under every engine.

A checkpoint is the file ``step-NNNNNNN.pt``, written to a temporary name, flushed to disk and
renamed, so a kill at any moment leaves the previous checkpoints intact and never a torn one; the
newest ``keep`` are kept. It holds what the loop hands it, each stateful part's own
``state_dict()``: the run's state (step, history, best validation point, the count of validations
without a new best, elapsed time), the scheduler, a method's extra trainable sub-network with its
optimiser, the fp16 loss scaler; and, for each process, its RNG states (Python, torch, CUDA) and
its batch source's state (generators, the adaptive schedule's replay buffer of that process's own
samples, threshold), so every process of a multi-process run continues with its own random
stream. Beside them: the hash of the run's configuration (a checkpoint is only resumed by the run
that wrote it, with as many processes) and the engine. The data order needs no
state: every global batch is drawn from a generator seeded with the training seed, so resuming at
step ``k`` replays the first ``k`` draws.

Where the weights go depends on the engine (:func:`mgsr_bench.train.distributed.engine`):

* one process and DDP: the student's weights (those that train: a LoRA student's adapters, its
  base being loaded again by the same command) and the optimiser are in the same file;
* FSDP2: each process writes its own shards of the student and the optimiser state with
  ``torch.distributed.checkpoint`` into the folder ``step-NNNNNNN.parts`` (nothing is gathered: a
  13B student costs no process more than its share);
* DeepSpeed ZeRO-2/3: the engine's own ``save_checkpoint`` (module and optimiser partitions, one
  file per process) into ``step-NNNNNNN.parts``.

The best validated weights are written once per best step, as ``best-NNNNNNN.pt`` (the main
process's copy) or, under FSDP2, ``best-NNNNNNN.parts`` (each process's shards), and each
checkpoint names the one it goes with; copies older than the one the oldest kept checkpoint names
are deleted.

The parts are written into a temporary folder that is renamed once every process has finished,
and the file, written last, marks the checkpoint complete; a run of several processes needs its
``--out`` on a filesystem every process sees (on several nodes, a shared one).

The file is read with ``torch.load(weights_only=True)``: only tensors and plain containers, never
arbitrary pickled objects (DeepSpeed reads its own parts with its own loader).
"""

from __future__ import annotations

import dataclasses
import os
import random
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import torch

from mgsr_bench.data.collate import Example
from mgsr_bench.errors import UserError, writing
from mgsr_bench.outputs import temp_sibling
from mgsr_bench.sampling.replay import as_tuples
from mgsr_bench.train import distributed
from mgsr_bench.train.runtime import Runtime

PATTERN = re.compile(r"^step-(\d+)\.pt$")
BEST = re.compile(r"^best-(\d+)(\.pt|\.parts)$")


def rng_state() -> dict[str, Any]:
    """This process's global random streams: Python's, torch's and its own device's."""
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():  # this process's own device (one per process under every launcher)
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(as_tuples(state["python"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _write(path: Path, state: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    try:
        with writing(path):
            with open(tmp, "wb") as f:
                torch.save(state, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            _fsync(path.parent)  # the rename itself, against a crash of the machine (a kill needs no more)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoints(folder: Path) -> list[Path]:
    """The folder's checkpoints, oldest first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := PATTERN.match(p.name))]
    return [p for _, p in sorted(found)]


class Checkpoints:
    """A run's checkpoints in ``folder``: written and read by every process together, whatever the engine.

    With ``every`` > 0 (checkpoints will be written) a folder that some process cannot see is
    refused at once, before training; otherwise only if a failure is saved or a checkpoint found.
    """

    def __init__(self, folder: Path, config_hash: str, runtime: Runtime, model: torch.nn.Module,
                 optimizer: Any, keep: int = 2, every: int = 0) -> None:
        self.folder, self.config_hash, self.keep = folder, config_hash, keep
        self.runtime, self.accelerator, self.model, self.optimizer = runtime, runtime.accelerator, model, optimizer
        self.engine = runtime.engine
        self.parted = self.engine in ("fsdp", "zero2", "zero3")  # weights or optimiser state held in shards
        self._shared = runtime.world == 1  # whether every process is known to see the folder
        if every:
            self._check_every_process_sees_the_folder()

    def _check_every_process_sees_the_folder(self) -> None:
        """Refuse a folder that some process does not share (each node its own disk), once, before the
        first file that every process writes or reads: the main process writes a file of a name new
        to this launch, and each process looks for it (for a few seconds: a network filesystem can
        take that long to show another machine's new file)."""
        if self._shared:
            return
        name = distributed.from_main(f".shared-{uuid.uuid4().hex}")
        marker = self.folder / name
        if self.runtime.is_main:
            self.folder.mkdir(parents=True, exist_ok=True)
            marker.write_text(name)
        self.accelerator.wait_for_everyone()
        deadline = time.monotonic() + 10
        while not (sees := marker.is_file() and marker.read_text() == name) and time.monotonic() < deadline:
            time.sleep(0.5)
        seen = distributed.per_process(sees)  # returns once every process has looked
        if self.runtime.is_main:
            marker.unlink()
        if not all(seen):
            blind = ", ".join(str(rank) for rank, ok in enumerate(seen) if not ok)
            raise UserError(f"process {blind} cannot see the main process's files in {self.folder}: put --out on a "
                            "filesystem every process shares (on several nodes, a shared one)")
        self._shared = True

    def save(self, step: int, state: dict[str, Any], mine: dict[str, Any],
             best_state: dict[str, torch.Tensor] | None) -> Path:
        """Write ``step-NNNNNNN``: the run's ``state`` (the same on every process), each process's
        own ``mine`` (its RNG and source states), the weights and optimiser, and ``best_state``;
        then delete all but the newest ``keep``."""
        path = self._write_checkpoint(f"step-{step:07d}", state, mine, best_state)
        if self.runtime.is_main:
            found = checkpoints(self.folder)
            for old in found[:-self.keep]:
                old.unlink(missing_ok=True)
            kept = {p.stem for p in found[-self.keep:]}
            for parts in self.folder.glob("step-*.parts"):  # older ones, and any a killed run left behind
                if parts.name.removesuffix(".parts") not in kept:
                    shutil.rmtree(parts, ignore_errors=True)
            # best copies older than the one the oldest kept checkpoint names (the best step only grows)
            oldest = torch.load(found[-self.keep:][0], map_location="cpu", weights_only=True, mmap=True)["best"]
            for best in self.folder.iterdir():
                if oldest is not None and (m := BEST.match(best.name)) and int(m.group(1)) < int(oldest.removeprefix("best-")):
                    shutil.rmtree(best) if best.is_dir() else best.unlink()
        self.accelerator.wait_for_everyone()
        return path

    def save_failure(self, step: int, state: dict[str, Any], mine: dict[str, Any],
                     best_state: dict[str, torch.Tensor] | None, batch: list[Example]) -> Path:
        """The state before a failed step and that step's whole batch (every process's share), as
        ``nonfinite-step-N.pt`` (never resumed; its parts, under sharded engines, in ``.parts``)."""
        shares = distributed.per_process([dataclasses.asdict(e) for e in batch])
        path = self._write_checkpoint(f"nonfinite-step-{step}", {**state, "batch": [e for share in shares for e in share]},
                           mine, best_state)
        self.accelerator.wait_for_everyone()
        return path

    def _write_checkpoint(self, stem: str, state: dict[str, Any], mine: dict[str, Any],
                          best_state: dict[str, torch.Tensor] | None) -> Path:
        self._check_every_process_sees_the_folder()
        main = self.runtime.is_main
        ranks = distributed.per_process(mine)
        best = self._write_best(state["best_step"], best_state)
        if self.parted:
            self._write_parts(self.folder / f"{stem}.parts", self._save_parts)
            weights: dict[str, Any] = {}
        elif main:  # the weights that train (a LoRA student's base is loaded again by the same command)
            weights = {"student": distributed.snapshot(self.runtime, self.model),
                       "optimizer": self.optimizer.state_dict()}
        path = self.folder / f"{stem}.pt"
        if main:
            _write(path, {**state, **weights, "best": best, "engine": self.engine, "ranks": ranks,
                          "config_hash": self.config_hash})
        return path

    def _write_best(self, step: int, best_state: dict[str, torch.Tensor] | None) -> str | None:
        """Write the best validated weights once per best step, as ``best-NNNNNNN.pt`` (the main
        process's copy) or, under FSDP2, ``best-NNNNNNN.parts`` (each process's shards); every
        checkpoint names the one it goes with. Returns that name (None before the first validation)."""
        name = f"best-{step:07d}"
        path = self._best_path(name)
        # the main process decides for all (under ZeRO-3 only it holds the copy)
        has_best, written = distributed.from_main((best_state is not None, path.exists()))
        if not has_best:
            return None
        if written:  # by an earlier checkpoint of this run
            return name
        if self.engine == "fsdp":
            import torch.distributed.checkpoint as dcp

            self._write_parts(path, lambda folder: dcp.save({"best": best_state}, checkpoint_id=folder))
        elif self.runtime.is_main:
            _write(path, best_state)
        return name

    def _best_path(self, name: str) -> Path:
        return self.folder / (f"{name}.parts" if self.engine == "fsdp" else f"{name}.pt")

    def _write_parts(self, parts: Path, save: Any) -> None:
        """``save(folder)`` on every process into a temporary folder, renamed to ``parts`` once all are done."""
        main = self.runtime.is_main
        tmp = parts.with_name(f".{parts.name}.tmp")
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.accelerator.wait_for_everyone()
        save(tmp)
        for f in tmp.rglob("*"):  # each process flushes what it wrote (DeepSpeed writes without fsync)
            _fsync(f)
        self.accelerator.wait_for_everyone()
        if main:
            shutil.rmtree(parts, ignore_errors=True)
            os.replace(tmp, parts)
            _fsync(parts.parent)

    def _save_parts(self, folder: Path) -> None:
        if self.engine == "fsdp":
            import torch.distributed.checkpoint as dcp

            dcp.save(self._fsdp_state(), checkpoint_id=folder)
        else:
            self._deepspeed().save_checkpoint(str(folder), tag="deepspeed", save_latest=False)

    def _fsdp_state(self) -> dict[str, Any]:
        """This process's shards of the student and of its optimiser state."""
        from torch.distributed.checkpoint.state_dict import get_state_dict

        student, optimizer = get_state_dict(self.model, self.optimizer.optimizer)
        return {"student": student, "optimizer": optimizer}

    def _deepspeed(self) -> Any:
        return self.accelerator.deepspeed_engine_wrapped.engine

    def load(self) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """Load the newest checkpoint into the model and optimiser; returns the run's state (with
        ``best_state``) and this process's own part, or None when there is none.

        The main process chooses the checkpoint and checks it (refusing another run's, one written
        under another engine, one whose parts are missing); every process then loads that one, or
        stops with the same message: processes never resume different steps."""
        choice, problem = None, None
        if self.runtime.is_main:
            try:
                choice = self._choose()
            except UserError as e:
                problem = str(e)
        choice, problem = distributed.from_main((choice, problem))
        if problem is not None:
            raise UserError(problem)
        if choice is None:
            return None
        self._check_every_process_sees_the_folder()
        # memory-mapped: a process reads only what it uses (not the main process's best weights under ZeRO-3)
        state = torch.load(self.folder / choice, map_location="cpu", weights_only=True, mmap=True)
        if self.parted:
            self._load_parts((self.folder / choice).with_suffix(".parts"))
        else:
            distributed.restore(self.runtime, self.model, state["student"])
            self.optimizer.load_state_dict(state["optimizer"])
        state["best_state"] = self._load_best(state["best"])
        return state, state["ranks"][self.runtime.rank]

    def _load_best(self, name: str | None) -> dict[str, torch.Tensor] | None:
        """The best validated weights a checkpoint names (FSDP2: this process's shards; ZeRO-3: on
        the main process only)."""
        if name is None or (self.engine == "zero3" and not self.runtime.is_main):
            return None
        if self.engine == "fsdp":
            import torch.distributed.checkpoint as dcp

            target = {"best": distributed.snapshot(self.runtime, self.model)}  # this process's shapes
            dcp.load(target, checkpoint_id=self._best_path(name))
            return target["best"]
        return torch.load(self._best_path(name), map_location="cpu", weights_only=True, mmap=True)

    def _choose(self) -> str | None:
        """The newest checkpoint's file name, checked to belong to this run; None when there is none."""
        found = checkpoints(self.folder)
        if not found:
            return None
        path = found[-1]
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:  # a file that is not a checkpoint: say which, do not guess
            raise UserError(f"cannot read checkpoint {path} ({type(e).__name__}); delete it to resume "
                            "from the one before") from None
        if state.get("config_hash") != self.config_hash:
            raise UserError(f"{self.folder} holds checkpoints of a different run (config hash "
                            f"{state.get('config_hash')} vs {self.config_hash}); choose another --out or "
                            f"delete {self.folder}")
        if state.get("engine") != self.engine:
            raise UserError(f"{path} was written under {state.get('engine')}, this run is {self.engine}: "
                            f"launch with the same engine to resume, or delete {self.folder}")
        parts = path.with_suffix(".parts")
        if self.parted and not parts.is_dir():
            raise UserError(f"{parts} is missing (the shards of {path.name}); delete {path} to resume "
                            "from the one before")
        if state["best"] is not None and not self._best_path(state["best"]).exists():
            raise UserError(f"{self._best_path(state['best'])} is missing (the best weights {path.name} names); "
                            f"delete {path} to resume from the one before")
        if self.engine in ("zero2", "zero3"):  # DeepSpeed would go on without them, with a warning only
            held = len(list((parts / "deepspeed").glob("*zero_pp_rank_*optim_states.pt")))
            if held != self.runtime.world:
                raise UserError(f"{parts} holds {held} of the {self.runtime.world} optimizer "
                                f"partitions; delete {path} to resume from the one before")
        return path.name

    def _load_parts(self, parts: Path) -> None:
        """Load the sharded weights and optimiser state."""
        if self.engine != "fsdp":
            loaded, _ = self._deepspeed().load_checkpoint(str(parts), tag="deepspeed", load_optimizer_states=True,
                                                          load_lr_scheduler_states=False)
            if loaded is None:
                raise UserError(f"DeepSpeed found no checkpoint in {parts}; delete {parts.with_suffix('.pt')} "
                                "to resume from the one before")
            return
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import set_state_dict

        target = self._fsdp_state()  # templates of this process's shapes, filled in place
        dcp.load(target, checkpoint_id=parts)
        set_state_dict(self.model, self.optimizer.optimizer, model_state_dict=target["student"],
                       optim_state_dict=target["optimizer"])
