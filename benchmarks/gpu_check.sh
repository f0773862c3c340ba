#!/usr/bin/env bash
# The checks that need a GPU, in one go, for a machine with CUDA (CI has none):
#   1. the CUDA tests: tests/dynfilter/test_cuda.py and the CUDA cases of test_dynamic_filter_backends.py and test_surgery.py;
#   2. the benchmark on the GPU: dynfilter bench --suite $GPU_CHECK_SUITES --device cuda
#      (default: dynamic fused adfnet deform model; fused runs the Triton fused kernels of issue 17);
#   3. packing small runs on one GPU: benchmarks/sweep_jobs.py times the quick DnCNN sweep (8 runs at the
#      paper's batch 16 and patch 128, 1,000 steps each) with --jobs 1, 2 and 4, and with --executor ray
#      when ray is installed (docs/experiments.md, Scaling out).
#   4. training throughput at the paper's shape (16x3x128x128) per model and trainer option (fp32, bf16, fp16,
#      channels_last, compile): dynfilter bench --suite train --device cuda, into $OUT/bench-train
#      (its own timeout: compiling 5 models twice takes minutes).
# Runs from a source checkout with the python3 that holds torch (the package need not be installed).
# Usage: bash benchmarks/gpu_check.sh [OUT_DIR]   (default: $OUT, else gpu-check/)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-gpu-check}}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
status=0
{
  nvidia-smi -L
  python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
} 2>&1 | tee "$out/environment.txt"
timeout "${GPU_CHECK_TEST_S:-240}" python3 -m pytest -o addopts="" -q -p no:cacheprovider -rs \
  tests/dynfilter/test_cuda.py tests/dynfilter/test_dynamic_filter_backends.py tests/dynfilter/test_surgery.py -k cuda 2>&1 | tee "$out/tests.txt" || status=1
# shellcheck disable=SC2086  # the suites are words
timeout "${GPU_CHECK_BENCH_S:-360}" python3 -m experiments.cli bench --suite ${GPU_CHECK_SUITES:-dynamic fused adfnet deform model} --device cuda --repeat 5 \
  --out "$out/bench" 2>&1 | tee "$out/bench.txt" || status=1
ray_row=$(python3 -c "import ray" 2>/dev/null && echo "--executor ray")
# shellcheck disable=SC2086  # empty or two words
timeout "${GPU_CHECK_SWEEP_S:-600}" python3 benchmarks/sweep_jobs.py --study dncnn --preset quick --device cuda \
  --set train.iterations=1000 --set train.batch_size=16 --set train.patch_size=128 --set 'seeds=[0, 1]' \
  --jobs 1 2 4 $ray_row 2>&1 | tee "$out/sweep_jobs.txt" || status=1
timeout "${GPU_CHECK_TRAIN_S:-420}" python3 -m experiments.cli bench --suite train --device cuda --repeat 10 --settle 0 \
  --out "$out/bench-train" 2>&1 | tee "$out/bench-train.txt" || status=1
exit $status
