"""Load models and tokenizers by Hub name or local path, and check that a pair can be distilled.

Token-level distillation compares teacher and student distributions entry by entry, so both must
index the same vocabulary. That is checked on the tokenizers (same token -> id map), never
assumed, before any compute.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
import transformers
from packaging.version import Version
from safetensors import SafetensorError
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

try:  # transformers 5
    from transformers.initialization import no_init_weights
except ImportError:  # transformers 4
    from transformers.modeling_utils import no_init_weights

from mgsr_bench.errors import EnvironmentFailure, UserError


@contextmanager
def quiet_hub() -> Iterator[None]:
    """Silence the Hub client's own warnings (an offline lookup logs one before raising): the
    caller turns the failure into one clear line."""
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


# what a saved tokenizer leaves in its folder: the fast tokenizer's file, or a slow one's vocabulary
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model",
                   "tokenizer_config.json")


def check_local_folder(name_or_path: str | Path, what: str) -> None:
    """A name that can only be a local path (absolute, ``.``/``~``-relative, or with more than one
    ``/``, which no Hub id has) must be a folder: the Hub client would answer with its repo-id
    rules instead of saying the folder is not there."""
    name = str(name_or_path)
    path = Path(name).expanduser()
    if path.is_dir() or not (path.is_absolute() or name.startswith((".", "~")) or name.count("/") > 1
                             or path.exists()):
        return
    problem = "is a file, not a folder" if path.exists() else "no such folder"
    raise UserError(f"cannot load {what} {name!r}: {problem} (a local {what} is the folder save_pretrained "
                    "wrote; a Hub id is NAME or ORG/NAME)")


def load_tokenizer(name_or_path: str | Path, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """A tokenizer with a pad token (EOS when it has none, as with GPT-2) and left padding."""
    check_local_folder(name_or_path, "tokenizer")
    try:
        with quiet_hub():
            tok = AutoTokenizer.from_pretrained(str(name_or_path), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        local = Path(name_or_path).is_dir() and not any((Path(name_or_path) / f).is_file() for f in TOKENIZER_FILES)
        reason = ("the folder holds no tokenizer files (save the tokenizer beside the model: "
                  "tokenizer.save_pretrained(folder))" if local else " ".join(str(e).split()))
        raise UserError(f"cannot load tokenizer {name_or_path!r}: {reason}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


# ``from_pretrained``'s dtype argument: ``dtype`` since transformers 4.56 (``torch_dtype``, its old
# name, is deprecated there), ``torch_dtype`` before
_DTYPE_ARGUMENT = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"


def _unreadable_weights(name_or_path: str | Path, error: Exception) -> str:
    """The line for weights that do not load: a damaged safetensors file, or a pickle that torch's
    ``weights_only`` loading refused because it would run code."""
    if isinstance(error, pickle.UnpicklingError):
        return (f"cannot load model {str(name_or_path)!r}: its pickled weights hold more than tensors (loading them "
                "could run code), refused; convert a trusted copy to safetensors")
    return (f"cannot load model {str(name_or_path)!r}: a safetensors file is damaged ({str(error).splitlines()[0]}); "
            "download or save the model again")


def load_model(name_or_path: str | Path, dtype: torch.dtype = torch.float32,
               trust_remote_code: bool = False, weights: bool = True) -> PreTrainedModel:
    """A causal LM from a local folder or a Hub name; code shipped with a Hub model runs only when
    the user asked for it (``--trust-remote-code``). Weights load through safetensors where present.

    With ``weights=False`` no weight is read: the architecture is built from the checkpoint's
    config with its weights allocated but never written (no initialisation), so they take no host
    memory until something writes them; buffers computed by the modules themselves (rotary
    frequencies) are real. For the processes that receive every weight from the main process
    (FSDP's rank-0 loading, :func:`mgsr_bench.train.distributed.weights_from_main`).
    """
    check_local_folder(name_or_path, "model")
    try:
        with quiet_hub():
            if weights:
                return AutoModelForCausalLM.from_pretrained(str(name_or_path), **{_DTYPE_ARGUMENT: dtype},
                                                            trust_remote_code=trust_remote_code)
            config = AutoConfig.from_pretrained(str(name_or_path), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load model {name_or_path!r}: {str(e).splitlines()[0]}") from None
    except (SafetensorError, pickle.UnpicklingError) as e:
        raise EnvironmentFailure(_unreadable_weights(name_or_path, e)) from e
    with no_init_weights():  # which also skips the tying of the embeddings: tied below
        model = AutoModelForCausalLM.from_config(config, **{_DTYPE_ARGUMENT: dtype},
                                                 trust_remote_code=trust_remote_code)
    model.tie_weights()
    return model.eval()  # as from_pretrained returns it


def on_compute_device(model: PreTrainedModel) -> PreTrainedModel:
    """``model`` moved to this process's device, the one training uses: accelerate's choice, a GPU
    (or another accelerator) when there is one, else the CPU (``CUDA_VISIBLE_DEVICES=`` keeps a
    GPU machine's run on the CPU). Evaluation generates on it, so that a model is scored where
    it trains, not on the CPU beside an idle GPU."""
    from accelerate import PartialState

    return model.to(PartialState().device)


def check_same_vocabulary(teacher: PreTrainedTokenizerBase, student: PreTrainedTokenizerBase) -> None:
    """Refuse a pair whose tokenizers map tokens to different ids."""
    if teacher.get_vocab() != student.get_vocab():
        raise UserError(
            f"teacher and student tokenizers differ ({len(teacher)} vs {len(student)} tokens, or different ids): "
            "token-level distillation needs a shared vocabulary; pick a pair from the same model family"
        )


def check_vocabulary_fits(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, role: str) -> None:
    """A model may pad its embedding matrix beyond the tokenizer (Qwen2.5: 151936 vs 152064 rows;
    logits are then cut to the tokenizer's length), but never have fewer rows than it has tokens."""
    rows = whole_shape(model.get_input_embeddings().weight)[0]
    if rows < len(tokenizer):
        raise UserError(f"{role} has {rows} embedding rows for a tokenizer of {len(tokenizer)} tokens; "
                        "resize its embeddings or use the tokenizer it was trained with")


def position_limit(model: torch.nn.Module) -> int | None:
    """How many positions a model was built for (GPT-2's ``n_positions``, the others'
    ``max_position_embeddings``), or None when its config names none."""
    config = getattr(model, "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(text, "n_positions", None) or getattr(text, "max_position_embeddings", None)


def check_positions(model: torch.nn.Module, role: str, length: int, what: str, fix: str) -> None:
    """Refuse, before any compute, a sequence of ``length`` tokens past the model's positions: learned
    position embeddings (GPT-2, OPT) end in an index error mid-run, rotary ones run past their
    trained context."""
    limit = position_limit(model)
    if limit is not None and length > limit:
        raise UserError(f"{what} is {length} tokens, past the {role}'s {limit} positions: {fix}")


def whole_shape(tensor: torch.Tensor) -> torch.Size:
    """A weight's shape; for a parameter DeepSpeed's ZeRO-3 partitioned as it loaded (which this
    process holds only a slice of, its own shape being empty), the whole parameter's (``ds_shape``)."""
    return getattr(tensor, "ds_shape", tensor.shape)


def count_parameters(model: torch.nn.Module) -> int:
    """Number of parameters (tied weights counted once; partitioned ones whole)."""
    return sum(whole_shape(p).numel() for p in model.parameters())


def weight_shapes(model: torch.nn.Module) -> dict[str, list[int]]:
    """Every state-dict entry's whole shape (:func:`whole_shape`), by name: a model's architecture as a
    run's fingerprint records it, the same whether or not its weights were partitioned."""
    return {k: list(whole_shape(v)) for k, v in model.state_dict(keep_vars=True).items()}


def weights_digest(folder: Path) -> str:
    """A fingerprint of a saved model's weights: SHA-256 over its ``*.safetensors`` files, in name order.

    ``save_pretrained`` writes the same bytes for the same weights, so two folders share a digest
    exactly when they hold the same weights (and a rebuilt suite whose training took another
    floating-point path gets another one).
    """
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise UserError(f"{folder} holds no *.safetensors weights")
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]
