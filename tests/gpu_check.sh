#!/usr/bin/env bash
# The prepared GPU check for a session lent a GPU machine, most important first:
# the performance benchmark (`mgsr-bench bench`: GPT-2 1.5B -> 124M in bf16, TRL's GKDTrainer beside
# gkd when trl imports) and the memory planner at its shapes, the GPU-only tests and the harness
# tests on CUDA, FSDP2 and ZeRO-3 training runs through fsdp.yaml and zero3.yaml on one GPU, a
# sharded run killed and resumed, the activation, chunked-loss and generation benchmarks, and the smoke-sized
# main job. Every step has its own time limit and the whole check a
# deadline (GPU_CHECK_SECONDS, default 420): a step that would start too late is skipped and says
# so. GPU_CHECK_STEPS (default: all) names the steps to run, for a rerun of a few:
# bench plan tests fsdp zero3 resume activations chunked generation run.
# Logs and figures go under $OUT as they are written, so a check cut short keeps what it measured.
#
# Device call: first, here, `bash tests/gpu_wheels.sh` (the wheels the image lacks into .whl/, and
# the shared evaluation data and GPT-2 tokenizer into .shared/), then carry [".whl", ".shared"] and run
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
#     && export PYTHONPATH=/tmp/site:$PWD && bash tests/gpu_check.sh
# with timeout_s 480.
set -uo pipefail
export PYTHONUNBUFFERED=1 MGSR_BENCH_CACHE=/tmp/mgsr-cache TOKENIZERS_PARALLELISM=false
[ -d .shared ] && export MGSR_BENCH_SHARED="$PWD/.shared"  # ../shared does not travel to the device
export OUT=${OUT:-/tmp/gpu-check}  # the steps run in shells of their own
mkdir -p "$OUT"
LOG="$OUT/check.log"  # every text log in one file: at most 8 files come back from $OUT
DEADLINE=$(( $(date +%s) + ${GPU_CHECK_SECONDS:-420} ))
STEPS=" ${GPU_CHECK_STEPS:-bench plan tests fsdp zero3 resume activations chunked generation run} "

# step NAME SECONDS COMMAND...: run COMMAND, its output appended to the log as it comes, within
# SECONDS and the deadline; skipped when not selected or when under 20 s would be left for it
step() {
    local name=$1 limit=$2; shift 2
    [[ $STEPS == *" $name "* ]] || return 0
    local left=$(( DEADLINE - $(date +%s) ))
    if (( left < 20 )); then echo "== $name: skipped, ${left} s left before the deadline" | tee -a "$LOG"; return 0; fi
    (( limit > left )) && limit=$left
    echo "== $name (limit ${limit} s)" | tee -a "$LOG"
    local began=$(date +%s)
    STEP_LIMIT=$limit timeout -k 10 "$limit" "$@" >> "$LOG" 2>&1  # SIGKILL 10 s after SIGTERM: a process stuck in a CUDA call runs no handler
    echo "== $name: exit $? in $(( $(date +%s) - began )) s" | tee -a "$LOG"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$LOG"
python3 -c "import torch, transformers, accelerate; print('torch', torch.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__)" 2>&1 | tee -a "$LOG"
python3 -c "import rouge_score, trl, datasets; print('trl', trl.__version__, 'datasets', datasets.__version__)" 2>&1 | tail -1 | tee -a "$LOG"
python3 -c "import deepspeed; print('deepspeed', deepspeed.__version__)" 2>&1 | tail -1 | tee -a "$LOG"
echo "shared data: ${MGSR_BENCH_SHARED:-not carried}" | tee -a "$LOG"

# 3 timed steps after 1 warm-up per method, each method in its own process; bench.json after each
step bench 200 python3 -m mgsr_bench bench --steps 3 --warmup 1 --json "$OUT/bench.json" \
    $(python3 -c "import trl" 2>/dev/null && echo --trl)

# the planner's estimate at bench's shapes and settings, term by term, then beside bench.json's
# measured peaks (the plan's runtime allowance covers the CUDA context, which neither peak counts)
step plan 40 bash -c 'for m in kd gkd distillm mgsr; do echo "-- $m"
    python3 -m mgsr_bench plan gpt2-xl-gpt2 --micro-batch 8 --seq-len 512 --no-checkpointing --method $m; done
    python3 tests/plan_vs_peak.py "$OUT/bench.json"'

# the CPU-only two-process gloo test of test_decode is left out: it measures nothing on a GPU
step tests 90 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_train.py tests/test_chunked.py \
    tests/test_sampling.py tests/test_mgsr.py tests/test_decode.py -k "not fsdp2_sharded"

# FSDP2 through the shipped accelerate config on the one GPU (bf16, teacher sharded, on-policy samples
# from gathered weights, sharded checkpoints through torch.distributed.checkpoint); the quick suite builds here first
rm -rf /tmp/gpu-fsdp /tmp/gpu-quick  # a rerun on a warm machine starts afresh (train refuses a finished --out)
step fsdp 90 accelerate launch --config_file mgsr_bench/launch/accelerate/fsdp.yaml --num_processes 1 \
    -m mgsr_bench train gkd --quick --steps 6 --checkpoint-every 2 --out /tmp/gpu-fsdp

# ZeRO-3 through the shipped config on the one GPU (DeepSpeed carried as a wheel; NCCL, bf16, the
# models partitioned as they load, on-policy samples from the unsharded generation copy)
rm -rf /tmp/gpu-zero3
step zero3 90 accelerate launch --config_file mgsr_bench/launch/accelerate/zero3.yaml --num_processes 1 \
    -m mgsr_bench train gkd --quick --steps 6 --checkpoint-every 2 --out /tmp/gpu-zero3

# Kill and resume under FSDP2 on the GPU (sharded checkpoints written and read over NCCL): the same
# deterministic kd command uninterrupted, then killed (every process of it) once step 4's checkpoint
# exists, then run again; the resumed run must end with the uninterrupted run's losses. Its inner
# limits come from the step's own (STEP_LIMIT), so nothing of it outlives the step.
descendants() { local p; for p in $(pgrep -P "$1"); do descendants "$p"; echo "$p"; done; }
alive() { [ -n "$(ps -o stat= -p "$1" 2>/dev/null | grep -v Z)" ]; }
resume() {
    local end=$(( $(date +%s) + STEP_LIMIT - 5 )) killed="" pids p left
    trap '[ -n "$killed" ] && kill -9 $(descendants "$killed") "$killed" 2>/dev/null' EXIT
    trap 'exit 143' TERM  # stop here (the EXIT trap then kills the tree), not in the next run
    local kd=(accelerate launch --config_file mgsr_bench/launch/accelerate/fsdp.yaml --num_processes 1 -m mgsr_bench
              train kd --quick --steps 12 --checkpoint-every 2 --deterministic)
    rm -rf /tmp/kd-whole /tmp/kd-resumed
    timeout -k 5 $(( (end - $(date +%s)) / 2 )) "${kd[@]}" --out /tmp/kd-whole || { echo "RESUME CHECK: kd whole failed"; return 1; }
    setsid "${kd[@]}" --out /tmp/kd-resumed &
    killed=$!
    while [ ! -f /tmp/kd-resumed/checkpoints/step-0000004.pt ] && alive "$killed" && (( $(date +%s) < end )); do sleep 0.1; done
    # accelerate launch starts its worker in a session of its own: kill the whole tree, then wait for it
    pids="$(descendants "$killed") $killed"
    kill -9 $pids 2>/dev/null
    for p in $pids; do for _ in $(seq 100); do alive "$p" || break; sleep 0.1; done; done
    killed=""
    echo "killed with checkpoints: $(ls /tmp/kd-resumed/checkpoints 2>/dev/null | tr '\n' ' ')"
    if [ -f /tmp/kd-resumed/training.json ] || [ ! -f /tmp/kd-resumed/checkpoints/step-0000004.pt ]; then
        echo "RESUME CHECK INVALID: the run finished before the kill, or never wrote step 4's checkpoint"; return 1
    fi
    left=$(( end - $(date +%s) ))  # timeout 0 would mean no limit at all
    (( left > 0 )) || { echo "RESUME CHECK: no time left for the resumed run"; return 1; }
    timeout -k 5 "$left" "${kd[@]}" --out /tmp/kd-resumed || { echo "RESUME CHECK: kd resumed failed"; return 1; }
    python3 - <<'PY'
import json, sys
whole, resumed = (json.load(open(f"/tmp/kd-{n}/training.json"))["training"]["history"] for n in ("whole", "resumed"))
gap = max(abs(a["loss"] - b["loss"]) / abs(a["loss"]) for a, b in zip(whole, resumed))
ok = len(whole) == len(resumed) > 0 and gap <= 1e-6
print(f"RESUME CHECK {'PASSED' if ok else 'FAILED'}: {len(resumed)} vs {len(whole)} steps, "
      f"largest relative loss difference {gap:.2e} (at most 1e-6 passes)")
sys.exit(0 if ok else 1)
PY
}
export -f descendants alive resume
step resume 120 bash -c resume

# the bytes each architecture's layers save under CUDA's kernels, beside the planner's (CPU-measured) table
step activations 40 bash -c 'python3 -m mgsr_bench.benchmarks.activation_memory --device cuda \
    > "$OUT/activations.json"; e=$?; cat "$OUT/activations.json"; exit $e'
step chunked 40 python3 -m mgsr_bench.benchmarks.chunked_loss --device cuda --repeats 3 --json "$OUT/chunked_loss.json"
if [ -d "${MGSR_BENCH_SHARED:-../shared}/data/instruct" ]; then
    step generation 60 python3 -m mgsr_bench.benchmarks.generation --model gpt2-124m --limit 16 --json "$OUT/generation.json"
else
    echo "== generation: skipped, no shared data (run tests/gpu_wheels.sh and carry .shared)" | tee -a "$LOG"
fi
step run 90 python3 -m mgsr_bench run --quick --seeds 10,20 --out /tmp/gpu-quick
cp /tmp/gpu-quick/leaderboard.md "$OUT/" 2>/dev/null
echo "== done, $(( DEADLINE - $(date +%s) )) s before the deadline" | tee -a "$LOG"
