"""What the harness does differently when accelerate shards the models (FSDP2, DeepSpeed ZeRO).

The loop in :mod:`mgsr_bench.train.loop` is written once for every engine; the few places where
an engine changes what a step must do live here, each named for what it does:

* **the teacher** (:func:`prepare_teacher`): frozen and whole on every process under DDP and
  ZeRO-2; under FSDP2 it is sharded with the student's own wrap policy, mesh and precision
  (``fsdp2_prepare_model``, the function ``accelerator.prepare`` uses for the student), and under
  ZeRO-3 it becomes a DeepSpeed inference engine with stage-3 partitioning, so a 13B teacher costs
  each GPU ``1/N`` of its weights;
* **loading** (:func:`load_models`): under FSDP's rank-0 loading only rank 0 reads the
  checkpoints; the other processes build the models without weights and receive them from rank 0
  (:func:`broadcast_from_main`), so a machine's host memory holds each model once. Under ZeRO-3
  with ``zero3_init_flag`` the models are partitioned as they load, so no process ever holds one
  whole (a teacher kept whole excepted);
* **generation** (:func:`gathered`): on-policy samples, teacher samples and a rewrite step's passes run with
  every parameter of the sharded models gathered once for the whole sampling call. Per-layer
  gathering (the ordinary sharded forward) costs one all-gather per layer per decoded token, and
  worse, it is a collective: processes whose samples end at different lengths would wait for each
  other forever. Inside :func:`gathered` no collective runs, so each process decodes its own rows
  to their own lengths;
* **backward and step** (:func:`backward`, :func:`optimizer_step`): DeepSpeed owns gradient
  accumulation, clipping and the optimizer step; the harness passes its own reduction through
  unchanged (``scale_wrt_gas=False``: the loss is already the micro-batch's share of the global
  token mean);
* **weights out** (:func:`snapshot`, :func:`restore`, :func:`plain_model`): the best validated
  weights (those that train: a LoRA student's adapters only) are kept and restored without
  gathering under FSDP2 (each process keeps its own shards); under ZeRO-3 they are gathered to
  the main process; the trained student leaves the harness as an ordinary model on the main process.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import accelerate
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from accelerate.utils.deepspeed import HfDeepSpeedConfig
from packaging.version import Version
from transformers import PreTrainedModel

from mgsr_bench.errors import UserError

if TYPE_CHECKING:
    from mgsr_bench.train.runtime import Runtime


# The oldest accelerate the FSDP2 path passes its tests with (torch 2.13): with 1.10-1.13 the first
# step fails in the chunked loss (the head's weight still a DTensor beside plain hidden states), with
# 1.14 in the first forward (tied embeddings in two FSDP groups); 1.6 refuses FULL_STATE_DICT and 1.0
# has no FSDP2. DDP and ZeRO-2/3 pass with 1.12, one process with 1.0.
FSDP2_ACCELERATE = "1.15"


def check_fsdp_accelerate(fsdp: bool | None = None) -> None:
    """Refuse FSDP on an accelerate its path is known to fail with, in one line, before any work.

    ``fsdp`` defaults to what ``accelerate launch`` exported (``ACCELERATE_USE_FSDP``), so that the
    check runs before the ``Accelerator`` is built (older versions fail inside its constructor).
    Such a launch on a machine without an accelerator is refused too: accelerate then ignores the
    FSDP setting and runs plain data parallel, while the processes other than rank 0 would have
    built their models without weights for FSDP to fill (:func:`weights_from_main`)."""
    if fsdp is None:
        fsdp = _env_flag("ACCELERATE_USE_FSDP")
        if fsdp and not _accelerator_available():
            raise UserError("this launch asks for FSDP, which accelerate runs only on GPUs (or other accelerators) "
                            "and this machine has none: on the CPU launch with ddp.yaml")
    if fsdp and Version(accelerate.__version__) < Version(FSDP2_ACCELERATE):
        raise UserError(f"FSDP2 training needs accelerate >= {FSDP2_ACCELERATE} (found {accelerate.__version__}, "
                        f"on which the first FSDP2 step fails): pip install -U 'accelerate>={FSDP2_ACCELERATE}'")


def _accelerator_available() -> bool:
    """Whether torch sees a GPU or another accelerator, on which accelerate can run FSDP."""
    accelerators = getattr(torch, "accelerator", None)  # torch.accelerator.is_available: recent torch only
    return accelerators.is_available() if hasattr(accelerators, "is_available") else torch.cuda.is_available()


def _env_flag(name: str) -> bool:
    """A true/false setting that ``accelerate launch`` exported from its config."""
    return os.environ.get(name, "false").lower() in ("1", "true")


def weights_from_main() -> bool:
    """Whether this process leaves reading the weights to the main process: a process other than
    rank 0 of an FSDP launch with ``fsdp_cpu_ram_efficient_loading`` (as ``accelerate launch``
    exports it). Such a process builds its models without weights (``load_model(weights=False)``)
    and receives them from rank 0 while they are sharded (:func:`rank0_loading`), so a machine's
    host memory holds each model whole once, not once per process."""
    return (_env_flag("ACCELERATE_USE_FSDP") and _env_flag("FSDP_CPU_RAM_EFFICIENT_LOADING")
            and int(os.environ.get("RANK", "0")) != 0)


LORA_ENGINES = ("a LoRA student trains under DDP or ZeRO-2 (its adapter is small): launch with "
                "ddp.yaml or zero2.yaml, or train the full student")


def check_lora_launch() -> None:
    """Refuse a LoRA student under a launch that shards the student (FSDP, or ZeRO-3 named in the
    accelerate config or in the DeepSpeed config file it points to), in one line, before any model
    loads. (:func:`mgsr_bench.train.loop.train` refuses it again from the engine itself.)"""
    if _env_flag("ACCELERATE_USE_FSDP") or launched_zero_stage() == 3:
        raise UserError(LORA_ENGINES)


def launched_zero_stage() -> int | None:
    """The ZeRO stage a DeepSpeed launch asks for, read as accelerate reads it, before the engine
    exists: the DeepSpeed config file's ``zero_optimization.stage`` when the accelerate config names
    a ``deepspeed_config_file`` (the file wins over the accelerate config), else the accelerate
    config's ``zero_stage`` (accelerate's default 2 when neither says); None outside DeepSpeed."""
    if not deepspeed_launch():
        return None
    path = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "none")
    if path != "none":
        try:  # accelerate's HfDeepSpeedConfig reads the file only (transformers' would register it)
            stage = HfDeepSpeedConfig(path).get_value("zero_optimization.stage")
        except (OSError, ValueError, AttributeError) as err:  # bad JSON; JSON that is not an object
            raise UserError(f"the DeepSpeed config file {path} (deepspeed_config_file in the accelerate config) "
                            f"is not readable JSON ({type(err).__name__}): fix the file or the path") from None
        if stage is not None and stage != "auto":
            return int(stage)
    return int(os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", 2))


def deepspeed_launch() -> bool:
    """Whether ``accelerate launch`` started this process with a DeepSpeed config: the caller then
    builds the ``Accelerator`` before loading the models, which ZeRO-3's ``zero3_init_flag`` needs
    (:func:`partitioned_loading`)."""
    return _env_flag("ACCELERATE_USE_DEEPSPEED")


@contextlib.contextmanager
def partitioned_loading(accelerator: Accelerator | None, partition: bool,
                        dtype: torch.dtype | None = None) -> Iterator[None]:
    """Models loaded inside the block are partitioned as they load when ``partition`` and the
    accelerator runs ZeRO-3 with ``zero3_init_flag``; otherwise they load whole.

    Partitioned loading is transformers' own: once accelerate has registered the DeepSpeed config
    (as it builds the ``Accelerator``), ``from_pretrained`` builds the model inside
    ``deepspeed.zero.Init`` (each process allocates only its ``1/N`` slice of every weight) and fills
    the slices from the checkpoint one module at a time. ``zero.Init`` casts the slices to the
    config's precision (bf16/fp16 if enabled, else fp32), not to the dtype asked of
    ``from_pretrained``: with ``dtype`` the block registers a copy of the config whose precision is
    ``dtype`` (a bf16 teacher stays bf16 beside an fp32 student). accelerate registers the config
    whatever ``zero3_init_flag`` says (1.12, 1.15), so a model to load whole (the flag off, a
    teacher kept whole) loads with the registration lifted for the block. Either way the
    accelerator's own registration is back when the block ends.
    """
    if accelerator is None or not _zero3(accelerator):
        yield
        return
    import copy

    from transformers.integrations.deepspeed import (HfDeepSpeedConfig, set_hf_deepspeed_config,
                                                     unset_hf_deepspeed_config)

    plugin = accelerator.state.deepspeed_plugin
    registered = getattr(plugin, "dschf", None)
    partition = partition and bool(plugin.zero3_init_flag)
    if partition and (dtype is None or registered is None):
        yield
        return
    unset_hf_deepspeed_config()
    if partition:  # the accelerator's config at ``dtype``'s precision, registered for the block
        config = copy.deepcopy(registered.config)
        for key, precision in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
            config[key] = {**config.get(key, {}), "enabled": dtype == precision}
        at_dtype = HfDeepSpeedConfig(config)  # noqa: F841 (registered while it lives)
    try:
        yield
    finally:
        unset_hf_deepspeed_config()
        if registered is not None:
            set_hf_deepspeed_config(registered)


def load_models(teacher: str | Path, student: str | Path, accelerator: Accelerator | None, *,
                shard_teacher: bool, teacher_dtype: torch.dtype = torch.float32,
                student_dtype: torch.dtype = torch.float32,
                trust_remote_code: bool = False) -> tuple[PreTrainedModel, PreTrainedModel]:
    """The teacher and the student, loaded as this launch's engine wants them.

    FSDP with ``fsdp_cpu_ram_efficient_loading``: only rank 0 reads the weights, the other
    processes build the models without them (:func:`weights_from_main`). ZeRO-3 with
    ``zero3_init_flag`` and ``accelerator`` already built: both models partitioned as they load,
    the teacher only if it is to be sharded (``shard_teacher``; a teacher kept whole loads whole),
    the teacher in ``teacher_dtype`` and the student in the engine's precision (DeepSpeed's bf16 or
    fp16 when enabled, which it would cast the student to anyway). Otherwise every process reads
    both whole, as a single process does.
    """
    from mgsr_bench.models import load_model

    read = not weights_from_main()
    with partitioned_loading(accelerator, shard_teacher, teacher_dtype):
        teacher_model = load_model(teacher, teacher_dtype, trust_remote_code, weights=read)
    with partitioned_loading(accelerator, True):
        student_model = load_model(student, student_dtype, trust_remote_code, weights=read)
    return teacher_model, student_model


def rank0_loading(accelerator: Accelerator) -> bool:
    """Whether the processes other than rank 0 hold models built without weights
    (:func:`weights_from_main`): FSDP with ``cpu_ram_efficient_loading``, under which
    ``fsdp2_prepare_model`` broadcasts rank 0's parameters and persistent buffers as it shards."""
    return (accelerator.distributed_type == DistributedType.FSDP
            and accelerator.state.fsdp_plugin.cpu_ram_efficient_loading)


def broadcast_from_main(model: torch.nn.Module, accelerator: Accelerator, parameters: bool) -> None:
    """Overwrite this process's buffers (and, with ``parameters``, its parameters) with rank 0's, in place.

    Under :func:`rank0_loading` FSDP's preparation broadcasts what it shards, but each process keeps
    its own non-persistent buffers (rotary frequencies, masks: built by the modules, unless a model
    computes them only in its weight initialisation), and a teacher left unsharded is not prepared
    by FSDP at all. Each tensor travels on the accelerator's device (NCCL sends no CPU tensors).
    """
    import torch.distributed as dist

    tensors = [*model.parameters(), *model.buffers()] if parameters else list(model.buffers())
    for t in tensors:
        data = t.data
        moved = data.to(accelerator.device)
        dist.broadcast(moved, src=0)
        if moved is not data:
            data.copy_(moved)


def _fingerprint(model: torch.nn.Module, device: torch.device) -> list[tuple[str, float, float]]:
    """Per state-dict tensor: its name, its sum and the sum of its magnitudes, in float64 (on
    ``device``, one tensor at a time: reading the weights once)."""
    sums = []
    with torch.no_grad():
        for name, t in model.state_dict().items():
            x = t.detach().to(device, torch.float64)
            sums.append((name, x.sum().item(), x.abs().sum().item()))
    return sums


def check_processes_agree(accelerator: Accelerator, run_hash: str, **models: torch.nn.Module | None) -> None:
    """Refuse, in one line on every process, a launch whose processes would train different things.

    Each machine reads its own files: a path (or a Hub id in each machine's own cache) can hold
    other weights on one of them, and a data file or recipe other contents. DDP would silently train
    the student from rank 0's weights but every process would distil from its own teacher, on its own
    data. ``run_hash`` fingerprints the settings, the tokenised training data and the architectures;
    each model whose weights every process holds whole is compared by per-tensor sums (within
    ``1e-6`` of its magnitude, room for another reduction order). The weights need no comparison
    under FSDP's rank-0 loading (rank 0 alone read them) nor where ZeRO-3 partitioned them as they
    loaded (transformers writes rank 0's checkpoint values into every gathered slice,
    ``modifier_rank=0``; each process holds only its own slice anyway)."""
    if accelerator.num_processes == 1:
        return
    whole = {name: m for name, m in models.items()
             if m is not None and not rank0_loading(accelerator) and not _zero3_parameters(m)}
    mine = {"run": run_hash, **{name: _fingerprint(m, accelerator.device) for name, m in whole.items()}}
    everyone = per_process(mine)
    for rank, theirs in enumerate(everyone[1:], 1):
        if theirs["run"] != everyone[0]["run"]:
            raise UserError(f"process {rank} has other settings, training data or tokenizer than process 0: "
                            "give every machine the same files (a filesystem they all see)")
        for name in whole:
            for (tensor, total, size), (_, main_total, main_size) in zip(theirs[name], everyone[0][name]):
                if abs(total - main_total) > 1e-6 * max(size, main_size) or abs(size - main_size) > 1e-6 * main_size:
                    raise UserError(f"process {rank} loaded other {name} weights than process 0 ({tensor} differs): "
                                    "give every machine the same checkpoint (a shared path, or one Hub revision)")


def engine(accelerator: Accelerator) -> str:
    """``single``, ``ddp`` (also multi-CPU gloo), ``fsdp`` (FSDP2), ``zero2`` (ZeRO 0-2) or ``zero3``."""
    kind = accelerator.distributed_type
    if kind == DistributedType.FSDP:
        check_fsdp_accelerate(True)
        if not accelerator.is_fsdp2:
            raise UserError("FSDP1 is not supported: set fsdp_version: 2 in the accelerate config "
                            "(mgsr_bench/launch/accelerate/fsdp.yaml)")
        return "fsdp"
    if kind == DistributedType.DEEPSPEED:
        return "zero3" if _zero3(accelerator) else "zero2"
    return "ddp" if accelerator.num_processes > 1 else "single"


def _zero3(accelerator: Accelerator) -> bool:
    return (accelerator.distributed_type == DistributedType.DEEPSPEED
            and accelerator.state.deepspeed_plugin.zero_stage == 3)


SHARDED = ("fsdp", "zero3")  # the engines that shard the weights themselves


def configure_deepspeed(accelerator: Accelerator, micro_batch: int, grad_accum: int, max_grad_norm: float) -> None:
    """Fill the DeepSpeed config with the harness's batch geometry and clipping (before ``prepare``).

    DeepSpeed checks ``train_batch_size = micro_batch x grad_accum x processes`` and clips inside
    its own step, so these come from the training config, not from the launcher's defaults.
    """
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return
    config = accelerator.state.deepspeed_plugin.deepspeed_config
    config["train_micro_batch_size_per_gpu"] = micro_batch
    config["gradient_accumulation_steps"] = grad_accum
    config["train_batch_size"] = micro_batch * grad_accum * accelerator.num_processes
    config["gradient_clipping"] = max_grad_norm


def prepare_teacher(teacher: PreTrainedModel, runtime: Runtime, shard: bool) -> torch.nn.Module:
    """The frozen teacher, in eval mode, placed for this engine (sharded under FSDP2 and ZeRO-3 when ``shard``)."""
    teacher = teacher.eval().requires_grad_(False)
    accelerator, kind = runtime.accelerator, runtime.engine
    if not shard or not runtime.sharded:
        teacher = teacher.to(accelerator.device)
        if rank0_loading(accelerator):  # the other processes built it without weights
            broadcast_from_main(teacher, accelerator, parameters=True)
        return teacher
    if kind == "fsdp":
        from accelerate.utils import fsdp2_prepare_model

        if rank0_loading(accelerator):
            broadcast_from_main(teacher, accelerator, parameters=False)
        return fsdp2_prepare_model(accelerator, teacher)
    import deepspeed

    plugin = accelerator.state.deepspeed_plugin.deepspeed_config
    config: dict[str, Any] = {"train_micro_batch_size_per_gpu": plugin["train_micro_batch_size_per_gpu"],
                              "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0}}
    for precision in ("bf16", "fp16"):
        if plugin.get(precision, {}).get("enabled") in (True, "auto") and accelerator.mixed_precision == precision:
            config[precision] = {"enabled": True}
    teacher_engine, *_ = deepspeed.initialize(model=teacher, config=config)
    return teacher_engine.module.eval()


def _fsdp_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def _param_groups(module: torch.nn.Module) -> list[Any]:
    """FSDP2's parameter groups of one FSDP module: a list in recent torch (one module may own several
    groups), a single optional group before (torch 2.8 and older)."""
    state = module._get_fsdp_state()
    if hasattr(state, "_fsdp_param_groups"):
        return list(state._fsdp_param_groups)
    return [state._fsdp_param_group] if state._fsdp_param_group is not None else []


def _zero3_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if hasattr(p, "ds_id")]


@contextlib.contextmanager
def gathered(*models: torch.nn.Module | None) -> Iterator[list[torch.nn.Module | None]]:
    """The models to generate with, each with every weight present (one gather per model) until the
    block ends; unsharded models pass through untouched.

    FSDP2: each FSDP module is unsharded in place and told not to reshard after its forward; on
    exit the reshard settings are put back as they were and the parameters resharded. ZeRO-3:
    DeepSpeed's hooks would release each module's weights after its forward even inside
    ``GatheredParameters``, so each model's weights are gathered once and copied into an ordinary
    model of the same class (an unsharded generation copy), freed when the block ends.
    """
    units = {id(m): _fsdp_modules(m) for m in models if m is not None}
    fsdp = [f for found in units.values() for f in found]
    with contextlib.ExitStack() as stack:
        if fsdp:
            for root in models:  # the root's lazy initialisation fixes its own reshard setting: run it first
                if root is not None and units[id(root)]:
                    root._get_fsdp_state()._lazy_init()
            # FSDP2 keeps the per-group setting in ``post_forward_mesh_info`` (None: keep unsharded);
            # set there directly, as the public setter (torch 2.8+) does after the lazy initialisation
            saved = [[g.post_forward_mesh_info for g in _param_groups(f)] for f in fsdp]
            for f in fsdp:
                for group in _param_groups(f):
                    group.post_forward_mesh_info = None
                f.unshard()

            def restore_fsdp() -> None:
                for f, infos in zip(fsdp, saved):
                    for group, info in zip(_param_groups(f), infos):
                        group.post_forward_mesh_info = info
                    f.reshard()

            stack.callback(restore_fsdp)
        yield [_generation_copy(m) if m is not None and _zero3_parameters(m) else m for m in models]


def _generation_copy(model: PreTrainedModel) -> PreTrainedModel:
    """An ordinary copy of a ZeRO-3 model, on its device, in the model's mode.

    Gathered one module at a time, so that beside the copy only that module's whole weights are
    ever held (gathering them all at once would hold the model twice); a weight shared by two
    modules (tied embeddings) is gathered and copied once.
    """
    import deepspeed

    copies: dict[int, torch.Tensor] = {}
    state: dict[str, torch.Tensor] = {}
    for prefix, module in model.named_modules():
        own = [(name, p) for name, p in module.named_parameters(recurse=False) if id(p) not in copies]
        with deepspeed.zero.GatheredParameters([p for _, p in own], modifier_rank=None):
            copies.update({id(p): p.detach().clone() for _, p in own})
        for name, p in module.named_parameters(recurse=False, remove_duplicate=False):
            state[f"{prefix}.{name}" if prefix else name] = copies[id(p)]
    state.update({k: v.detach().clone() for k, v in model.state_dict().items() if k not in state})  # buffers
    return _rebuild(model, state).train(model.training)


def _rebuild(model: PreTrainedModel, state: dict[str, torch.Tensor]) -> PreTrainedModel:
    """A model of ``model``'s own class (FSDP2's wrapper class looked through) holding ``state``;
    buffers outside the state dict (rotary frequencies), which no engine shards, come from ``model``."""
    from torch.distributed.fsdp import FSDPModule

    cls = next(c for c in type(model).__mro__ if issubclass(c, PreTrainedModel) and not issubclass(c, FSDPModule))
    with torch.device("meta"):
        plain = cls(model.config)
    plain.load_state_dict(state, assign=True)
    device = next(iter(state.values())).device
    for name, buffer in model.named_buffers():
        owner, _, leaf = name.rpartition(".")
        module = plain.get_submodule(owner)
        if module._buffers.get(leaf) is not None and module._buffers[leaf].is_meta:
            module._buffers[leaf] = buffer.detach().to(device, copy=True)
    plain.tie_weights()
    return plain


def local_accumulation(runtime: Runtime, student: torch.nn.Module, last: bool) -> contextlib.AbstractContextManager:
    """Where a micro-batch's gradients stay on each process until the ``last`` one reduces them:
    DDP's ``no_sync`` (one all-reduce per optimiser step; DeepSpeed decides in :func:`backward`).

    FSDP2 reduce-scatters every micro-batch instead: under ``no_sync`` it would hold every
    parameter's gradient unsharded (whole, in the reduce dtype, bf16 under bf16 mixed precision)
    until the last micro-batch, 2 bytes per student parameter on every GPU more than the sharded
    fp32 gradients the planner counts, summed in bf16."""
    if last or runtime.engine == "fsdp":
        return contextlib.nullcontext()
    return runtime.accelerator.no_sync(student)


def backward(runtime: Runtime, loss: torch.Tensor, last: bool) -> None:
    """One micro-batch's backward; gradients are reduced across processes on the ``last`` one."""
    if runtime.engine in ("zero2", "zero3"):
        ds_engine = runtime.accelerator.deepspeed_engine_wrapped.engine
        ds_engine.set_gradient_accumulation_boundary(last)
        ds_engine.backward(loss, scale_wrt_gas=False)
    else:
        runtime.accelerator.backward(loss)


def optimizer_step(runtime: Runtime, student: torch.nn.Module, optimizer: torch.optim.Optimizer,
                   max_grad_norm: float) -> float:
    """Clip to ``max_grad_norm`` and step; returns the gradient norm before clipping."""
    if runtime.engine in ("zero2", "zero3"):
        ds_engine = runtime.accelerator.deepspeed_engine_wrapped.engine
        ds_engine.step()  # clips to gradient_clipping (set from the training config), steps, zeroes
        return float(ds_engine.get_global_grad_norm())
    norm = runtime.accelerator.clip_grad_norm_(student.parameters(), max_grad_norm)
    optimizer.step()
    return float(norm)


def _frozen(model: torch.nn.Module) -> set[str]:
    """State-dict names of parameters that do not train (a LoRA student's base model): they never
    change, so a copy of the weights to restore later leaves them out."""
    return {name for name, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad}


def snapshot(runtime: Runtime, model: torch.nn.Module, whole: bool = False) -> dict[str, torch.Tensor] | None:
    """A CPU copy of the weights to restore later: those that train (a LoRA student's adapters
    only), or every one with ``whole``; FSDP2: this process's shards; ZeRO-3: gathered, on the main
    process, ``None`` elsewhere."""
    zero3 = runtime.engine == "zero3"
    frozen = set() if whole else _frozen(model)
    with contextlib.ExitStack() as stack:
        if zero3:
            import deepspeed

            stack.enter_context(deepspeed.zero.GatheredParameters(_zero3_parameters(model), modifier_rank=None))
        if zero3 and not runtime.is_main:
            return None
        return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items() if k not in frozen}


def restore(runtime: Runtime, model: torch.nn.Module, state: dict[str, torch.Tensor] | None) -> None:
    """Load weights taken by :func:`snapshot` (ZeRO-3: the main process's copy, re-partitioned);
    every weight that trains must be in ``state``."""
    def load() -> None:
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or set(missing) - _frozen(model):
            raise RuntimeError(f"weights to restore do not fit the model: missing {sorted(set(missing) - _frozen(model))}"
                               f", unexpected {sorted(unexpected)}")

    if runtime.engine == "zero3":
        import deepspeed

        with deepspeed.zero.GatheredParameters(_zero3_parameters(model), modifier_rank=0):
            if runtime.is_main:
                load()
        return
    load()


def plain_model(runtime: Runtime, model: PreTrainedModel) -> PreTrainedModel | None:
    """The trained student as an ordinary, unsharded model: the model itself unless its weights are
    sharded, else a fresh copy holding the gathered weights on the main process (``None`` elsewhere)."""
    if not runtime.sharded:
        return model
    if runtime.engine == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    else:
        state = snapshot(runtime, model, whole=True)
    if not runtime.is_main:
        return None
    return _rebuild(model, state).eval()


def _processes() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def per_process(value: Any) -> list[Any]:
    """Every process's ``value``, in process order, on every process (``[value]`` in a single process)."""
    if _processes() == 1:
        return [value]
    values: list[Any] = [None] * _processes()
    torch.distributed.all_gather_object(values, value)
    return values


def from_main(value: Any) -> Any:
    """The main process's ``value``, on every process (so that all take the same decision)."""
    if _processes() == 1:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def end_processes() -> None:
    """Wait for every process, then close the process group (nothing to do in a single process).

    A process that exits with its gloo or NCCL group still open can abort at interpreter shutdown
    ("terminate called without an active exception", SIGABRT): torchrun then reports a failed run
    although every rank finished. Seen in two-process CPU runs whose non-main ranks returned early.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    close_processes()


def close_processes() -> None:
    """Close a gloo process group, if one is open, without waiting for the other processes.

    For the error path: a process that stops on an error must not wait at a barrier the others may
    never reach, and should not leave its group open (the shutdown abort described in
    :func:`end_processes`); gloo peers still waiting on it in a collective then fail with a closed
    connection rather than at the process-group timeout. Only gloo: NCCL's destroy waits for the
    process's outstanding collectives to finish, which on the error path may be never, so an NCCL
    group is left to NCCL's own teardown at exit. Nothing to do after :func:`end_processes`.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "gloo":
        dist.destroy_process_group()
