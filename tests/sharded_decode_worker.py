"""Decode with a student sharded by FSDP2 (two gloo processes on CPU) and write whether each rank's
tokens and kept logits equal the unsharded model's, both through the ordinary sharded forward
(each layer gathers its weights as it runs) and inside ``gathered`` (the weights gathered once),
with how many all-gathers each ran: ``torchrun --nproc_per_node 2 ... OUT.json``.

The ranks decode different prompts to different lengths inside ``gathered``, as on-policy samples do.
"""

import json
import sys

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from transformers import LlamaConfig, LlamaForCausalLM

from mgsr_bench.sampling.decode import decode
from mgsr_bench.train.distributed import end_processes, gathered

PROMPTS = [[5, 6, 7, 8], [9, 10], [11, 12, 13]]


# the collective torch's FSDP2 all-gathers with: all_gather_single in recent torch, all_gather_into_tensor before
ALL_GATHER = "all_gather_single" if hasattr(dist, "all_gather_single") else "all_gather_into_tensor"


class CountingAllGather:
    """Counts FSDP2's all-gathers."""

    def __init__(self) -> None:
        self.calls = 0
        self.original = getattr(dist, ALL_GATHER)

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.original(*args, **kwargs)


def main() -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                         num_key_value_heads=2, intermediate_size=64)).double()
    mine = [[p + rank for p in prompt] for prompt in PROMPTS]  # each rank its own prompts
    steps = 4 + 5 * rank  # and its own length
    plain = decode(model, PROMPTS, 3, 0, 8, greedy=True, keep_logits=True)
    plain_mine = decode(model, mine, 3, 0, steps, greedy=True, keep_logits=True)
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    counter = CountingAllGather()
    setattr(dist, ALL_GATHER, counter)
    sharded = decode(model, PROMPTS, 3, 0, 8, greedy=True, keep_logits=True)  # the same lengths on every rank
    per_layer_calls, counter.calls = counter.calls, 0
    with gathered(model):
        before_decoding = counter.calls
        inside = decode(model, mine, 3, 0, steps, greedy=True, keep_logits=True)
        while_decoding = counter.calls - before_decoding
    after = decode(model, PROMPTS, 3, 0, 8, greedy=True)  # resharded again: the ordinary forward works

    def same(a, b):
        return a.tokens == b.tokens and all(torch.allclose(x, y) for x, y in zip(a.logits, b.logits))

    facts = {"sharded_equal": same(sharded, plain), "gathered_equal": same(inside, plain_mine),
             "after_equal": after.tokens == plain.tokens, "per_layer_all_gathers": per_layer_calls,
             "gathered_all_gathers": before_decoding, "all_gathers_while_decoding": while_decoding,
             "lengths": [len(t) for t in inside.tokens],
             "sharded_after": all(hasattr(p, "to_local") and p.to_local().numel() < p.numel()
                                  for p in model.model.layers.parameters())}
    results = [None] * dist.get_world_size()
    dist.all_gather_object(results, facts)
    if rank == 0:
        with open(sys.argv[1], "w") as f:
            json.dump(results, f)
    end_processes()


if __name__ == "__main__":
    main()
