"""The process's place in a training run, found once: accelerator, engine, rank, world, device.

:class:`Runtime` is built at the start of :func:`mgsr_bench.train.loop.train` from the
``Accelerator`` (the engine's checks, FSDP's version among them, run there and nowhere else during
training) and handed to everything below that depends on the engine or the process: the teacher's
placement, the backward and optimiser step, the weights' snapshots, the checkpoints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from accelerate import Accelerator

from mgsr_bench.errors import UserError
from mgsr_bench.train import distributed


def deterministic_cublas() -> None:
    """Give cuBLAS the fixed workspace its deterministic matrix products need. cuBLAS reads it when
    it first initialises, so a command line sets it before any CUDA work; a library caller gets it
    from :meth:`Runtime.seed`."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


@dataclass(frozen=True)
class Runtime:
    """This process's view of the run, the same for its whole length."""

    accelerator: Accelerator
    engine: str  # single, ddp, fsdp, zero2 or zero3 (:func:`mgsr_bench.train.distributed.engine`)
    rank: int
    world: int
    is_main: bool
    device: torch.device

    @classmethod
    def of(cls, accelerator: Accelerator) -> Runtime:
        """The runtime of ``accelerator``, its engine checked (FSDP1, an accelerate too old for FSDP2)."""
        return cls(accelerator, distributed.engine(accelerator), accelerator.process_index,
                   accelerator.num_processes, accelerator.is_main_process, accelerator.device)

    @property
    def sharded(self) -> bool:
        """Whether the engine shards the weights themselves (FSDP2, ZeRO-3)."""
        return self.engine in distributed.SHARDED

    def check_student(self, student: torch.nn.Module) -> None:
        """Refuse a LoRA student under an engine that shards it."""
        if self.sharded and hasattr(student, "peft_config"):
            raise UserError(distributed.LORA_ENGINES)

    def seed(self, seed: int, deterministic: bool) -> None:
        """Seed torch's global generator and, with ``deterministic``, use only deterministic kernels."""
        torch.manual_seed(seed)
        if deterministic:
            deterministic_cublas()
            torch.use_deterministic_algorithms(True)
