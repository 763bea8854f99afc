#!/usr/bin/env bash
# Throughput / MFU check of GRPO training and rollout on the accelerators of this machine
# (random Qwen2 weights, synthetic data); see launch/gpu_check.py for the flags and formulas.
#
# On a CUDA machine install the GPU build of JAX first:
#     pip install -e '.[cuda12]'   (or '.[cuda13]' for CUDA 13 drivers)
# Example: bash launch/gpu_check.sh --preset=qwen2.5-0.5b --batch=32 --seq_len=1024
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec python -m launch.gpu_check "$@"
