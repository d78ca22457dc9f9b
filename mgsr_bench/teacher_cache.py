"""The teacher's next-token distributions on the training responses, computed once per teacher x data
x template and read instead of running the teacher on ground-truth batches (batches a method samples
still run it).

A cache keeps, for every response position of every training example, the teacher's ``k`` most
likely token ids and their log-probabilities over the full vocabulary (at the temperature the
methods use); the mass the k leave is implied (one minus their sum) and is the rest bucket of
:class:`mgsr_bench.losses.divergences.TopK`. It is a folder: ``topk.safetensors`` (``ids`` int32 and
``logprobs`` in the chosen dtype, one row per response position, plus ``offsets``: example ``i``'s
rows are ``offsets[i]:offsets[i + 1]``) and ``manifest.json``, written last, with what the cache is
valid for: the teacher's weights digest, the digest of the tokenised examples (which fixes the data,
the template, the tokenizer and the truncation), the vocabulary size, k, the temperature and the
dtype. The folder is written under a temporary name and renamed whole, so a killed write is never
read; a cache whose manifest does not match the run is refused in one line before any step.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import torch

from mgsr_bench.data.collate import Example, TokenBatch, collate, token_batch, token_digest
from mgsr_bench.errors import UserError, writing
from mgsr_bench.losses.chunked import TokenLoss
from mgsr_bench.losses.divergences import TopK
from mgsr_bench.outputs import temp_sibling

if TYPE_CHECKING:
    from mgsr_bench.methods import Method

FORMAT = "mgsr-bench/teacher-cache"
VERSION = 1
MANIFEST = "manifest.json"
TENSORS = "topk.safetensors"
DTYPES = ("float32", "bfloat16", "float16")
REST = ("bucket", "renormalize")  # the two conventions for the mass outside the k ids


@dataclasses.dataclass(frozen=True)
class CacheKey:
    """What a cache is valid for; a run reads a cache only when every field matches its own."""

    teacher: str  # digest of the teacher's weights (:func:`state_digest`)
    examples: str  # digest of the tokenised training examples (:func:`token_digest`)
    vocab_size: int
    k: int
    temperature: float
    dtype: str


def bytes_per_token(k: int, dtype: str) -> int:
    """Disk bytes of one cached response position: k int32 ids and k log-probabilities (offsets aside)."""
    return k * (4 + getattr(torch, dtype).itemsize)


def state_digest(model: torch.nn.Module) -> str:
    """SHA-256 over a model's state-dict names and tensor bytes, in name order."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _batches(examples: list[Example], size: int) -> Iterator[list[Example]]:
    for start in range(0, len(examples), size):
        yield examples[start:start + size]


@torch.no_grad()
def _topk_rows(teacher: torch.nn.Module, examples: list[Example], key: CacheKey, pad_id: int,
               batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's top-k ids and log-probabilities at every response position, in example order."""
    device = next(teacher.parameters()).device
    ids, logprobs = [], []
    for chunk in _batches(examples, batch_size):
        batch = {k: v.to(device) for k, v in collate(chunk, pad_id).items()}
        mask, _ = token_batch(batch)
        logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[mask]
        values, top = torch.log_softmax(logits[:, :key.vocab_size].float() / key.temperature, -1).topk(key.k, -1)
        ids.append(top.int().cpu())
        logprobs.append(values.to(getattr(torch, key.dtype)).cpu())
    return torch.cat(ids), torch.cat(logprobs)


def write_cache(teacher: torch.nn.Module, examples: list[Example], folder: Path, key: CacheKey, pad_id: int,
                batch_size: int = 16) -> Path:
    """Run ``teacher`` over ``examples`` once and write the cache into ``folder`` (replacing one there)."""
    from safetensors.torch import save_file

    if not 1 <= key.k <= key.vocab_size:
        raise UserError(f"k must be within 1..{key.vocab_size} (the vocabulary), got {key.k}")
    teacher.eval()
    ids, logprobs = _topk_rows(teacher, examples, key, pad_id, batch_size)
    offsets = torch.tensor([0] + [len(e.response_ids) for e in examples]).cumsum(0)
    tmp = temp_sibling(folder)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with writing(folder):
            tmp.mkdir(parents=True)
            save_file({"ids": ids, "logprobs": logprobs, "offsets": offsets}, str(tmp / TENSORS))
            manifest = {"format": FORMAT, "version": VERSION, **dataclasses.asdict(key), "rows": int(offsets[-1]),
                        "examples_count": len(examples)}
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
            shutil.rmtree(folder, ignore_errors=True)
            tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def read_manifest(folder: Path) -> dict:
    """The manifest of a complete cache, or one line saying why ``folder`` is not one."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise UserError(f"{folder} is not a teacher cache (no {MANIFEST}; a write that was killed leaves none): "
                        "write one with `mgsr-bench cache-teacher`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise UserError(f"{path} is not a readable manifest: write the cache again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise UserError(f"{path} is not a version-{VERSION} teacher cache manifest: write the cache again")
    return manifest


def footprint(folder: Path) -> tuple[float, float]:
    """A written cache's size on disk in MB, and in MB per 1,000 response tokens."""
    size = sum(f.stat().st_size for f in Path(folder).iterdir()) / 1e6
    return size, size / max(read_manifest(folder)["rows"], 1) * 1000


@dataclasses.dataclass
class TeacherCache:
    """A cache read back: example ``i``'s rows of top-k ids and log-probabilities."""

    ids: torch.Tensor
    logprobs: torch.Tensor
    offsets: torch.Tensor

    def rows(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        start, stop = int(self.offsets[index]), int(self.offsets[index + 1])
        return self.ids[start:stop], self.logprobs[start:stop]


_KEY_WORDS = {"teacher": "teacher (weights digest)",
              "examples": "set of training examples (data, template, tokenizer or truncation; digest)",
              "vocab_size": "vocabulary size", "k": "k", "temperature": "temperature", "dtype": "dtype"}


def check_key(folder: Path, manifest: dict, expected: CacheKey) -> None:
    """Refuse, in one line, the cache in ``folder`` whose ``manifest`` differs from ``expected`` in any field."""
    for name, want in dataclasses.asdict(expected).items():
        have = manifest.get(name)
        same = (isinstance(have, (int, float)) and math.isclose(have, want)) if name == "temperature" else have == want
        if not same:
            raise UserError(f"teacher cache {folder} was written for another {_KEY_WORDS[name]} ({have!r}; "
                            f"this run: {want!r}): write it again with `mgsr-bench cache-teacher`")


def _tensors(folder: Path) -> TeacherCache:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(Path(folder) / TENSORS))
    except (OSError, SafetensorError) as e:
        raise UserError(f"teacher cache {folder}: {TENSORS} cannot be read ({str(e).splitlines()[0]}); "
                        "write the cache again") from None
    return TeacherCache(tensors["ids"], tensors["logprobs"], tensors["offsets"])


def load_cache(folder: Path, expected: CacheKey) -> TeacherCache:
    """The cache in ``folder``, refused in one line when any field of its key differs from ``expected``."""
    check_key(folder, read_manifest(folder), expected)
    return _tensors(folder)


@dataclasses.dataclass(frozen=True)
class CacheOption:
    """What a command asks for: the cache folder to read, and the convention for the rest (:data:`REST`)."""

    folder: Path
    rest: str = "bucket"


@dataclasses.dataclass(frozen=True)
class CacheReading:
    """How a run reads a cache: the cache's key, and the convention for the mass outside its k ids
    (``bucket``: one rest bucket, the default; ``renormalize``: the k ids renormalised)."""

    key: CacheKey
    rest: str = "bucket"

    def token_loss(self, method: Method) -> TokenLoss:
        """``method.token_losses`` with the batch's cached teacher rows standing in for the teacher's logits."""
        renormalize = self.rest == "renormalize"

        def token_loss(student_logits: torch.Tensor, teacher_logits: None, tokens: TokenBatch) -> torch.Tensor:
            ids, logprobs = tokens.teacher_topk
            return method.token_losses(student_logits, TopK(ids, logprobs, self.key.temperature, renormalize), tokens)

        return token_loss


def can_read(method: Method) -> bool:
    """Whether ``method``'s loss can take the cache for the teacher on its ground-truth batches: it reads the
    teacher only as its next-token distributions (``Method.teacher_distribution_only``), and some of its
    batches are ground truth. The batches a method samples carry no cached rows and run the live teacher."""
    return method.teacher_distribution_only and method.source_spec().ground_truth


def check_request(folder: Path, method: Method, rest: str) -> dict:
    """What can be refused before any model loads: a missing or partial cache, an unknown convention,
    a method that needs the live teacher; the cache's manifest."""
    if rest not in REST:
        raise UserError(f"the teacher cache's rest convention must be one of {', '.join(REST)}, got {rest!r}")
    if not can_read(method):
        raise UserError(f"method {method.name!r} cannot read a teacher cache: it reads no teacher distribution on "
                        "ground-truth responses (its loss needs none, or it trains on samples only); run it without "
                        "--teacher-cache")
    return read_manifest(folder)


def reading_for_run(folder: Path, method: Method, teacher: torch.nn.Module, examples: list[Example],
                    vocab_size: int, rest: str = "bucket") -> tuple[CacheReading, list[Example]]:
    """How a run reads the cache in ``folder``, and its examples with their rows attached; refused in
    one line, before any step, for a method that needs the live teacher and for a cache of another
    teacher, data, template, tokenizer, vocabulary or temperature."""
    manifest = check_request(folder, method, rest)
    expected = CacheKey(teacher=state_digest(teacher), examples=token_digest(examples), vocab_size=vocab_size,
                        k=manifest.get("k"), temperature=float(method.temperature), dtype=manifest.get("dtype"))
    check_key(folder, manifest, expected)
    return CacheReading(expected, rest), with_cached_rows(examples, _tensors(folder))


def with_cached_rows(examples: list[Example], cache: TeacherCache) -> list[Example]:
    """``examples`` with each one's cached teacher rows attached (``Example.teacher_topk``)."""
    if len(cache.offsets) != len(examples) + 1:
        raise UserError(f"the teacher cache holds {len(cache.offsets) - 1} examples, the run trains on "
                        f"{len(examples)}: write it again")
    return [dataclasses.replace(e, teacher_topk=cache.rows(i)) for i, e in enumerate(examples)]
