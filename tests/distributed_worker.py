"""Train a tiny student for a few steps and write the loss trajectory, under one engine: the
distributed tests run it in two processes (``torchrun --nproc_per_node 2``, gloo on CPU) and in one
process with the same global batch.

    python tests/distributed_worker.py OUT.json TOKENIZER_DIR MICRO_BATCH GRAD_ACCUM METHOD [ENGINE [DTYPE
        [CHECKPOINTS [STOP_AFTER [EVERY [MODELS [SHARD_TEACHER [TEACHER_DTYPE]]]]]]]]

METHOD is a method name, optionally with float options: ``mgsr,init_threshold=1.0``. DTYPE is
``float64`` (default) or ``float32`` (DeepSpeed's ZeRO-3 refuses float64). With CHECKPOINTS (a
folder; ``{rank}`` in it is replaced by the process's rank, as if each saw its own disk) the run
checkpoints there every EVERY steps (default 1; 0: none) and resumes from it; with STOP_AFTER it stops,
every process together, once the checkpoint of that step is written (OUT then says
``{"stopped_after": STOP_AFTER}``), as a run killed there would. With MODELS (a folder holding
``student`` and ``teacher`` checkpoints; ``{rank}`` in it as in CHECKPOINTS) the models load from
there as ``mgsr-bench train`` loads them (:func:`~mgsr_bench.train.distributed.load_models`): under
FSDP's rank-0 loading without their weights on the processes that receive them from rank 0, under
ZeRO-3 with ``ACCELERATE_DEEPSPEED_ZERO3_INIT=true`` partitioned as they load. SHARD_TEACHER ``0`` sets
``train.shard_teacher: false``; TEACHER_DTYPE (default DTYPE) is the dtype the teacher loads in from MODELS.

ENGINE: ``ddp`` (default), ``fsdp`` or ``zero2`` / ``zero3``. accelerate runs FSDP only on
accelerators (on CPU it falls back to DDP), so for ``fsdp`` this worker sets an FSDP2 plugin on the
accelerator's state right after it is built: from there accelerate's own FSDP2 preparation
(``fsdp2_prepare_model``, DTensor shards, reduce-scatter) runs over gloo, as it would over NCCL.
For DeepSpeed the worker sets the environment ``accelerate launch`` sets for a ZeRO config and
DeepSpeed's CPU accelerator (``DS_ACCELERATOR=cpu``).
"""

import contextlib
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from conftest import tiny_model  # noqa: E402
from mgsr_bench.config import train_config  # noqa: E402
from mgsr_bench.data.collate import tokenize_records  # noqa: E402
from mgsr_bench.methods import get_method  # noqa: E402
from mgsr_bench.models import load_tokenizer  # noqa: E402
from mgsr_bench.suite.tasks import generate_split  # noqa: E402
from mgsr_bench.train import loop  # noqa: E402
from mgsr_bench.train.distributed import (close_processes, deepspeed_launch, end_processes,  # noqa: E402
                                          load_models)


def use_engine(name: str) -> None:
    import accelerate
    from accelerate import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin, InitProcessGroupKwargs

    if name == "fsdp":
        class FSDPOnCPU(accelerate.Accelerator):
            def __init__(self, **kwargs):
                super().__init__(**kwargs)
                # the settings of mgsr_bench/launch/accelerate/fsdp.yaml
                self.state.fsdp_plugin = FullyShardedDataParallelPlugin(
                    fsdp_version=2, auto_wrap_policy="transformer_based_wrap", reshard_after_forward=True,
                    state_dict_type="FULL_STATE_DICT", cpu_ram_efficient_loading=True, cpu_offload=False,
                    activation_checkpointing=False)
                # AcceleratorState re-reads the process state whenever it is re-created: set both
                PartialState().distributed_type = self.state.distributed_type = DistributedType.FSDP

        loop.Accelerator = FSDPOnCPU
    elif name in ("zero2", "zero3"):
        os.environ.update({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": name[-1],
                           "DS_ACCELERATOR": "cpu", "ACCELERATE_MIXED_PRECISION": "no"})

        class DeepSpeedOnCPU(accelerate.Accelerator):  # accelerate takes cpu=True as "no DeepSpeed": name gloo
            def __init__(self, **kwargs):
                handlers = [InitProcessGroupKwargs(backend="gloo", timeout=h.timeout) for h in kwargs.pop("kwargs_handlers")]
                super().__init__(**{**kwargs, "cpu": False}, kwargs_handlers=handlers)

        loop.Accelerator = DeepSpeedOnCPU


def held_share(model: torch.nn.Module, named) -> float:
    """The share of ``model``'s parameters whose names pass ``named`` that this process holds."""
    sizes = [(p.ds_tensor.numel(), p.ds_numel) if hasattr(p, "ds_numel")  # (held, whole): ZeRO-3,
             else (p.to_local().numel(), p.numel()) if hasattr(p, "to_local")  # FSDP2's DTensor,
             else (p.numel(), p.numel())  # or a plain parameter
             for n, p in model.named_parameters() if named(n)]
    held, whole = (sum(column) for column in zip(*sizes))
    return held / whole


def gathered_weights(weight: torch.Tensor):
    """The whole ``weight`` inside the block, also where ZeRO-3 partitioned it."""
    if not hasattr(weight, "ds_id"):
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters([weight], modifier_rank=None)


class Stopped(Exception):
    pass


def stop_after(step: int) -> None:
    """Stop the run, on every process, right after the checkpoint of ``step`` is written."""
    save = loop.Checkpoints.save

    def save_then_stop(self, at, *args):
        path = save(self, at, *args)
        if at == step:
            raise Stopped
        return path

    loop.Checkpoints.save = save_then_stop


def main() -> None:
    out, tok_dir, micro, accum, method = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    defaults = ["ddp", "float64", "", "0", "1", "", "1", ""]
    engine, dtype, checkpoints, stop, every, models, shard, teacher_dtype = (
        sys.argv[6:] + defaults[len(sys.argv[6:]):])[:8]
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        use_engine(engine)
    torch.set_num_threads(1)
    records = generate_split(240, seed=123)
    tokenizer = load_tokenizer(tok_dir)
    cfg = train_config({"steps": 4, "micro_batch": micro, "grad_accum": accum, "lr": 5e-3, "eval_every": 2,
                        "val_metric": "loss", "val_size": 16, "mixed_precision": "no", "gen_max_new_tokens": 12,
                        "checkpoint_every": int(every), "process_timeout_s": 1234, "shard_teacher": shard == "1"})
    accelerator = None
    if models:  # as mgsr-bench train loads them, the accelerator first under DeepSpeed
        accelerator = loop.make_accelerator(cfg) if deepspeed_launch() else None
        models = Path(models.format(rank=os.environ.get("RANK", "0")))
        teacher, student = load_models(models / "teacher", models / "student", accelerator,
                                       shard_teacher=cfg.shard_teacher,
                                       teacher_dtype=getattr(torch, teacher_dtype or dtype),
                                       student_dtype=getattr(torch, dtype))
        # accelerate's own FSDP plugin (which this variable asks for) refuses the CPU: use_engine sets one
        os.environ.pop("ACCELERATE_USE_FSDP", None)
    else:
        student = tiny_model(len(tokenizer), seed=1).to(getattr(torch, dtype))
        teacher = tiny_model(len(tokenizer), seed=2, hidden=48).to(getattr(torch, dtype))
    # the share of each model's weights this process holds as it enters training (1/N: partitioned at load)
    held_at_load = {role: held_share(model, lambda n: True) for role, model in (("student", student), ("teacher", teacher))}
    weight = next(teacher.parameters())
    teacher_weights_dtype = str(getattr(weight, "ds_tensor", weight).dtype)  # a partition's own dtype
    # whether this process's student came with the weights (those of the models the tests save)
    saved = tiny_model(len(tokenizer), seed=1).lm_head.weight.to(student.dtype)
    with gathered_weights(student.lm_head.weight):
        as_saved = bool(torch.equal(student.lm_head.weight, saved))
    name, *options = method.split(",")  # METHOD may carry options: mgsr,init_threshold=1.0
    options = {k: float(v) for k, v in (o.split("=") for o in options)}
    if int(stop):
        stop_after(int(stop))
    trained = []  # the steps this process itself trained (a resumed run trains only the rest)
    backward = loop.backward_global_batch
    loop.backward_global_batch = lambda *a, **k: trained.append(1) or backward(*a, **k)
    # after each micro-batch's backward: the share of the student's gradient elements this process
    # holds in its parameters' .grad (under FSDP2, 1/N when they are reduce-scattered at once)
    grad_shares = []
    micro_backward = loop.distributed.backward

    def recording_backward(accelerator, loss, last):
        micro_backward(accelerator, loss, last)
        if engine == "fsdp" and distributed:
            grads = [p.grad for p in student.parameters() if p.requires_grad]
            local = sum(g.to_local().numel() for g in grads if g is not None)
            grad_shares.append(local / sum(p.numel() for p in student.parameters() if p.requires_grad))

    loop.distributed.backward = recording_backward
    try:
        result = loop.train(student, teacher, tokenizer, get_method(name, **options),
                            tokenize_records(records[:200], tokenizer), records[200:],
                            tokenize_records(records[200:], tokenizer), cfg,
                            checkpoint_dir=Path(checkpoints.format(rank=os.environ.get("RANK", "0")))
                            if checkpoints else None, accelerator=accelerator)
    except Stopped:
        if not distributed or torch.distributed.get_rank() == 0:
            out.write_text(json.dumps({"stopped_after": int(stop)}))
        end_processes()
        return
    # the share of the teacher's transformer-layer weights this process holds (1/N when sharded)
    teacher_held = held_share(teacher, lambda n: ".layers." in n)
    timeout, loaded = None, [as_saved]  # the process group's own timeout (private API: gloo's options)
    if distributed:
        group = torch.distributed.distributed_c10d._get_default_group()
        timeout = group._get_backend(torch.device("cpu")).options._timeout.total_seconds()
        loaded = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(loaded, as_saved)
    if not distributed or torch.distributed.get_rank() == 0:
        weights = sum(p.double().square().sum().item() for p in result.model.parameters())
        out.write_text(json.dumps({"losses": [h["loss"] for h in result.history], "weights": weights,
                                   "tokens": [h["tokens"] for h in result.history], "best_step": result.best_step,
                                   "steps_trained": len(trained), "timeout_s": timeout,
                                   "sources": [h["source"] for h in result.history],
                                   "teacher_held": teacher_held, "loaded_weights": loaded,
                                   "held_at_load": held_at_load, "teacher_dtype": teacher_weights_dtype,
                                   "grad_shares": grad_shares}))
    else:
        assert result.model is None or result.model is student
    end_processes()


if __name__ == "__main__":
    try:
        main()
    finally:  # on an error too (the refusal tests): never leave the group open at shutdown
        close_processes()
