#!/usr/bin/env bash
# Run here (PyPI reachable), before a device call: fetch as wheels, into .whl/ (ignored through
# .git/info/exclude), the packages the GPU check needs that the device image lacks (its Python is
# 3.12; it has torch, transformers, accelerate, peft, pandas, pyarrow, fsspec, xxhash, absl-py, click,
# joblib and regex, see /work/.library/device/KINDS.md): rouge-score and nltk for the metrics, and
# TRL with datasets for the GKDTrainer side of `mgsr-bench bench --trl`. Then carry .whl (see
# tests/gpu_check.sh for the device command).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 nltk==3.10.4 defusedxml==0.7.1
python3 -m pip wheel -q --no-deps -w .whl rouge-score==0.1.2  # an sdist only: its pure-Python wheel is built here
ls .whl
du -sh .whl
