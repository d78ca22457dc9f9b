"""The memory planner beside the benchmark's measured GPU peaks: ``python tests/plan_vs_peak.py bench.json``.

For each method in the benchmark's JSON, the plan of ``gpt2-xl-gpt2`` at the benchmark's settings
(B x T = 8 x 512, no checkpointing, one GPU), with and without its runtime allowance (the CUDA
context and fragmentation, which ``max_memory_allocated`` does not count), and the measured peaks.
Run by ``tests/gpu_check.sh``; prints, decides nothing.
"""

import json
import sys

from mgsr_bench.models.pairs import get_pair
from mgsr_bench.train.memory_plan import ALLOWANCE, plan_pair


def main(path: str) -> None:
    for r in json.load(open(path)):
        if r["method"] == "trl-gkd":
            continue
        plan = plan_pair(get_pair("gpt2-xl-gpt2"), r["method"], micro_batch=r["micro_batch"], seq_len=r["seq_len"],
                         gradient_checkpointing=False)
        print(f"PLAN VS PEAK {r['method']}: planned {plan.total:.2f} GiB ({plan.total - plan.terms[ALLOWANCE]:.2f} "
              f"without the allowance); measured allocated {r['peak_memory_gib']:.2f}, "
              f"reserved {r.get('peak_reserved_gib', float('nan')):.2f}")


if __name__ == "__main__":
    main(sys.argv[1])
