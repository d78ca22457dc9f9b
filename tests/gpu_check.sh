#!/usr/bin/env bash
# The prepared GPU check for a session lent a device (see DEVELOPERS.md): GPU-only tests, the
# harness tests on CUDA, the chunked-loss, generation and performance (`mgsr-bench bench`: GPT-2 1.5B -> 124M,
# bf16; TRL's GKDTrainer beside it when trl is importable) benchmarks, and the smoke-sized main job; under 8 minutes. Writes logs and records under $OUT.
# Device call: carry .whl (rouge-score and nltk wheels) and run
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
#     && export PYTHONPATH=/tmp/site:$PWD && bash tests/gpu_check.sh
set -uo pipefail
export PYTHONUNBUFFERED=1 MGSR_BENCH_CACHE=/tmp/mgsr-cache TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers, accelerate; print('torch', torch.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__)" | tee -a "$OUT/gpu.txt"
python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_train.py tests/test_chunked.py tests/test_sampling.py tests/test_mgsr.py tests/test_decode.py 2>&1 | tee "$OUT/pytest.log" | tail -15
python3 -m mgsr_bench.benchmarks.chunked_loss --device cuda --repeats 3 --json "$OUT/chunked_loss.json" 2>&1 | tee "$OUT/chunked_loss.log"
timeout 240 python3 -m mgsr_bench bench --json "$OUT/bench.json" $(python3 -c "import trl" 2>/dev/null && echo --trl) 2>&1 | tail -8 | tee "$OUT/bench.log"
[ -d "${MGSR_BENCH_SHARED:-../shared}/data/instruct" ] && timeout 120 python3 -m mgsr_bench.benchmarks.generation --model gpt2-124m --limit 64 --json "$OUT/generation.json" 2>&1 | tail -5 | tee "$OUT/generation.log"
start=$(date +%s)
python3 -m mgsr_bench run --quick --seeds 10,20 --out /tmp/gpu-quick > "$OUT/run.log" 2> "$OUT/run.err"
echo "run --quick exit $? in $(( $(date +%s) - start )) s" | tee -a "$OUT/run.log"
cp /tmp/gpu-quick/leaderboard.md "$OUT/" 2>/dev/null  # at most 8 files come back from $OUT
tail -25 "$OUT/run.log"; tail -3 "$OUT/run.err"
