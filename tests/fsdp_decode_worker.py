"""Decode with a student sharded by FSDP2 (two gloo processes on CPU) and write whether every rank's
tokens and kept logits equal the unsharded model's: ``torchrun --nproc_per_node 2 ... OUT.json``."""

import json
import sys

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from transformers import LlamaConfig, LlamaForCausalLM

from mgsr_bench.sampling.decode import decode

PROMPTS = [[5, 6, 7, 8], [9, 10], [11, 12, 13]]


def main() -> None:
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                         num_key_value_heads=2, intermediate_size=64)).double()
    plain = decode(model, PROMPTS, 3, 0, 8, greedy=True, keep_logits=True)
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    sharded = decode(model, PROMPTS, 3, 0, 8, greedy=True, keep_logits=True)
    same = sharded.tokens == plain.tokens and all(torch.allclose(a, b) for a, b in zip(sharded.logits, plain.logits))
    results = [None] * dist.get_world_size()
    dist.all_gather_object(results, same)
    if dist.get_rank() == 0:
        with open(sys.argv[1], "w") as f:
            json.dump({"same_on_every_rank": all(results), "tokens": sharded.tokens}, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
