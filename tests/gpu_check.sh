#!/usr/bin/env bash
# The prepared GPU check for a session lent a device (see DEVELOPERS.md): GPU-only tests, the
# harness tests on CUDA, the chunked-loss, generation and performance (`mgsr-bench bench`: GPT-2 1.5B -> 124M,
# bf16; TRL's GKDTrainer beside it when trl is importable) benchmarks, an FSDP2 training run through
# fsdp.yaml on one GPU, and the smoke-sized main job; under 8 minutes. Writes logs and records under $OUT.
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
start=$(date +%s)
python3 -m mgsr_bench run --quick --seeds 10,20 --out /tmp/gpu-quick > /tmp/run.log 2> "$OUT/run.err"
echo "run --quick exit $? in $(( $(date +%s) - start )) s" | tee -a "$LOG"
tail -25 /tmp/run.log | tee -a "$LOG"; tail -3 "$OUT/run.err"
cp /tmp/gpu-quick/leaderboard.md "$OUT/" 2>/dev/null
