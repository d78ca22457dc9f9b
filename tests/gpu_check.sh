#!/usr/bin/env bash
# The prepared GPU check for a session lent a device (see DEVELOPERS.md): GPU-only tests, the
# harness tests on CUDA, the chunked-loss, generation and performance (`mgsr-bench bench`: GPT-2 1.5B -> 124M,
# bf16; TRL's GKDTrainer beside it when trl is importable) benchmarks, an FSDP2 training run through
# fsdp.yaml on one GPU, a sharded run killed and resumed, and the smoke-sized main job; under 8
# minutes. Writes logs and records under $OUT.
# Device call: first run tests/gpu_wheels.sh here (the wheels the image lacks: rouge-score, nltk,
# TRL and datasets, into .whl/), then carry .whl and run
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
#     && export PYTHONPATH=/tmp/site:$PWD && bash tests/gpu_check.sh
set -uo pipefail
export PYTHONUNBUFFERED=1 MGSR_BENCH_CACHE=/tmp/mgsr-cache TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
LOG="$OUT/check.log"  # every text log in one file: at most 8 files come back from $OUT
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$LOG"
python3 -c "import torch, transformers, accelerate; print('torch', torch.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__)" | tee -a "$LOG"
python3 -c "import rouge_score, trl, datasets; print('trl', trl.__version__, 'datasets', datasets.__version__)" 2>&1 | tail -1 | tee -a "$LOG"
python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_train.py tests/test_chunked.py tests/test_sampling.py tests/test_mgsr.py tests/test_decode.py 2>&1 | tail -15 | tee -a "$LOG"
python3 -m mgsr_bench.benchmarks.chunked_loss --device cuda --repeats 3 --json "$OUT/chunked_loss.json" 2>&1 | tee -a "$LOG"
timeout 240 python3 -m mgsr_bench bench --json "$OUT/bench.json" $(python3 -c "import trl" 2>/dev/null && echo --trl) 2>&1 | tail -8 | tee -a "$LOG"
[ -d "${MGSR_BENCH_SHARED:-../shared}/data/instruct" ] && timeout 120 python3 -m mgsr_bench.benchmarks.generation --model gpt2-124m --limit 64 --json "$OUT/generation.json" 2>&1 | tail -5 | tee -a "$LOG"
# FSDP2 through the shipped accelerate config on the one GPU (bf16, teacher sharded, on-policy samples
# from gathered weights, sharded checkpoints through torch.distributed.checkpoint); the quick suite builds here first
timeout 300 accelerate launch --config_file mgsr_bench/launch/accelerate/fsdp.yaml --num_processes 1 \
    -m mgsr_bench train gkd --quick --steps 6 --checkpoint-every 2 --out /tmp/gpu-fsdp > /tmp/fsdp.log 2>&1
echo "fsdp train exit $?" | tee -a "$LOG"; tail -5 /tmp/fsdp.log | tee -a "$LOG"
# Kill and resume under FSDP2 on the GPU (sharded checkpoints written and read over NCCL): the same
# deterministic kd command uninterrupted, then killed once step 4's checkpoint exists and run again
KD=(accelerate launch --config_file mgsr_bench/launch/accelerate/fsdp.yaml --num_processes 1 -m mgsr_bench
    train kd --quick --steps 6 --checkpoint-every 2 --deterministic)
timeout 150 "${KD[@]}" --out /tmp/kd-whole > /tmp/kd.log 2>&1; echo "kd whole exit $?" | tee -a "$LOG"
setsid "${KD[@]}" --out /tmp/kd-resumed > /tmp/kd-killed.log 2>&1 &
killed=$!
for _ in $(seq 300); do [ -f /tmp/kd-resumed/checkpoints/step-0000004.pt ] && break; sleep 0.5; done
kill -9 -- -"$killed" 2>/dev/null; wait "$killed" 2>/dev/null
echo "killed with $(ls /tmp/kd-resumed/checkpoints 2>/dev/null | tr '\n' ' ')" | tee -a "$LOG"
timeout 150 "${KD[@]}" --out /tmp/kd-resumed >> /tmp/kd.log 2>&1; echo "kd resumed exit $?" | tee -a "$LOG"
grep -a "best validation\|Error" /tmp/kd.log | tail -4 | tee -a "$LOG"
python3 - <<'PY' 2>&1 | tee -a "$LOG"
import json
whole, resumed = (json.load(open(f"/tmp/kd-{n}/training.json"))["training"]["history"] for n in ("whole", "resumed"))
gap = max(abs(a["loss"] - b["loss"]) / abs(a["loss"]) for a, b in zip(whole, resumed))
print(f"kd resumed vs whole: {len(resumed)} vs {len(whole)} steps, largest relative loss difference {gap:.2e}")
PY
start=$(date +%s)
python3 -m mgsr_bench run --quick --seeds 10,20 --out /tmp/gpu-quick > /tmp/run.log 2> "$OUT/run.err"
echo "run --quick exit $? in $(( $(date +%s) - start )) s" | tee -a "$LOG"
tail -25 /tmp/run.log | tee -a "$LOG"; tail -3 "$OUT/run.err"
cp /tmp/gpu-quick/leaderboard.md "$OUT/" 2>/dev/null
