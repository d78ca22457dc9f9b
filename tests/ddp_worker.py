"""Train a tiny student for a few steps and write the loss trajectory: the DDP test runs it in two
processes (``torchrun --nproc_per_node 2``: accelerate picks gloo on CPU) and in one process with the same global batch.

    python tests/ddp_worker.py OUT.json TOKENIZER_DIR MICRO_BATCH GRAD_ACCUM METHOD
"""

import json
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
from mgsr_bench.train import train  # noqa: E402


def main() -> None:
    out, tok_dir, micro, accum, method = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    torch.set_num_threads(1)
    records = generate_split(240, seed=123)
    tokenizer = load_tokenizer(tok_dir)
    student, teacher = tiny_model(len(tokenizer), seed=1).double(), tiny_model(len(tokenizer), seed=2, hidden=48).double()
    cfg = train_config({"steps": 4, "micro_batch": micro, "grad_accum": accum, "lr": 5e-3, "eval_every": 4,
                        "val_metric": "loss", "val_size": 16, "mixed_precision": "no"})
    result = train(student, teacher, tokenizer, get_method(method), tokenize_records(records[:200], tokenizer),
                   records[200:], tokenize_records(records[200:], tokenizer), cfg)
    if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
        return
    weights = sum(p.double().square().sum().item() for p in student.parameters())
    out.write_text(json.dumps({"losses": [h["loss"] for h in result.history], "weights": weights,
                               "tokens": [h["tokens"] for h in result.history]}))


if __name__ == "__main__":
    main()
