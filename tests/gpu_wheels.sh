#!/usr/bin/env bash
# Run here (PyPI reachable), before a device call: fetch as wheels, into .whl/ (ignored through
# .git/info/exclude), the packages the GPU check needs that the device image lacks (its Python is
# 3.12; it has torch, transformers, accelerate, peft, pandas, pyarrow, fsspec, xxhash, absl-py, click,
# joblib and regex, see /work/.library/device/KINDS.md): rouge-score and nltk for the metrics,
# TRL with datasets for the GKDTrainer side of `mgsr-bench bench --trl`, and DeepSpeed with the
# packages it needs that the image lacks (hjson; pydantic 2.10, which asks for typing-extensions
# >= 4.12.2 where newer ones ask for >= 4.16, so the image's own is likelier to do: its version is
# not known here) for the ZeRO-3 step (DeepSpeed 0.19.8's ZeRO-3 run through the CLI was checked here
# with that pydantic); and a copy of the shared
# data the GPU tests read into .shared/. Then carry .whl and .shared (see tests/gpu_check.sh for
# the device command).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
EXCLUDE=$(git rev-parse --git-path info/exclude)  # .git is a file in a linked worktree
mkdir -p "$(dirname "$EXCLUDE")"
grep -qx '/.whl/' "$EXCLUDE" 2>/dev/null || echo '/.whl/' >> "$EXCLUDE"
rm -rf .whl && mkdir .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 nltk==3.10.4 defusedxml==0.7.1 \
    pydantic==2.10.6 pydantic-core==2.27.2 annotated-types==0.7.0 hjson==3.1.0
# sdists only: their pure-Python wheels are built here (DeepSpeed's without its CUDA ops, which
# the harness does not use: it passes DeepSpeed torch's own optimizer)
python3 -m pip wheel -q --no-deps -w .whl rouge-score==0.1.2 deepspeed==0.19.8
ls .whl
du -sh .whl
# ../shared does not travel to the device: the evaluation sets and the GPT-2 tokenizer the GPU
# tests and the generation benchmark read go as .shared/ (ignored too; gpu_check.sh points
# MGSR_BENCH_SHARED at it). Never committed: the project reads ../shared everywhere else.
grep -qx '/.shared/' "$EXCLUDE" 2>/dev/null || echo '/.shared/' >> "$EXCLUDE"
rm -rf .shared && mkdir -p .shared/data .shared/tokenizers
cp -r ../shared/data/instruct .shared/data/ && cp -r ../shared/tokenizers/gpt2 .shared/tokenizers/
du -sh .shared
