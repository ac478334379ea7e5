#!/usr/bin/env bash
# Record every snippet on a borrowed GPU machine in one call, and bring the recordings back as one tarball.
#
#   bash scripts/device-record.sh prepare   # here: pack MNIST and the pure-Python wheels into .device/ (git-ignored)
#   bash scripts/device-record.sh run       # there (cwd = repo, $OUT set, .device carried): record, time, pack
#
# The GPU machine has python3 with torch, torchvision and matplotlib, but not torchsummary or torchinfo, and no
# network; `run` installs the carried wheels into /tmp/site. Then, here: tar -xzf <files_at>/recordings.tar.gz,
# check `python -m tools.record --check`, build strictly, commit docs/outputs and docs/notebooks.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  prepare)
    mkdir -p .device
    tar -czf .device/mnist.tar.gz -C "${LESSON_DATA:-../shared/data}" MNIST/raw
    python3 -m pip download -q --no-deps --only-binary=:all: -d .device torchsummary==1.5.1 torchinfo==1.8.0
    ls -la .device ;;
  run)
    : "${OUT:?run this on the device machine, where OUT is set}"
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .device/*.whl
    export PYTHONPATH=/tmp/site LESSON_DATA=/tmp/lesson-data PYTHONUNBUFFERED=1
    mkdir -p "$LESSON_DATA" && tar -xzf .device/mnist.tar.gz -C "$LESSON_DATA"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
    start=$(date +%s.%N)
    python3 -m tools.record --device cuda --force 2>&1 | tee "$OUT/record.log"
    echo "whole lesson: $(echo "$(date +%s.%N) - $start" | bc) s" | tee -a "$OUT/record.log"
    python3 -m tools.record --device cuda 2>&1 | tail -1 | tee -a "$OUT/record.log"
    tar -czf "$OUT/recordings.tar.gz" docs/outputs docs/notebooks ;;
  *) echo "usage: $0 prepare|run" >&2; exit 2 ;;
esac
