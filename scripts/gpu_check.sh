#!/usr/bin/env bash
# The GPU checks of the library in one prepared script (a few minutes on one GPU):
#   1. the tests that need CUDA (tests/test_gpu_path.py: CUDA graphs and reduce-overhead train
#      like eager, no synchronizing call in a compiled step; the buffer and SAC/CrossQ on CUDA),
#   2. benchmarks/bench_losses.py --device cuda, which rewrites the GPU section of
#      docs/benchmarks.md (the CPU section is kept),
#   3. the same with --stack-seeds 10: ten IQL-sized seeds in one vmapped update, eager, compiled
#      and in a CUDA graph (the section "Stacked seeds on a GPU").
#
#   scripts/gpu_check.sh                # both
#   MIN_TIME=1 LOSSES="iql iql_hand bdpo" scripts/gpu_check.sh
#
# Output: the pytest summary, the benchmark tables, and docs/benchmarks.md (commit it).
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: this script needs a GPU')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

python -m pytest -q -rs tests/test_gpu_path.py tests/test_offline.py::test_sampling_on_a_cuda_device_when_available \
  "tests/test_sac_policies.py::test_crossq_trains_on_cuda"

MIN_TIME=${MIN_TIME:-2}
LOSSES=${LOSSES:-"iql iql_hand awac sql xql sfac srpo bdpo"}
# shellcheck disable=SC2086
python benchmarks/bench_losses.py --device cuda --losses $LOSSES --min-time "$MIN_TIME" \
  --write docs/benchmarks.md
python benchmarks/bench_losses.py --device cuda --losses iql sfac --stack-seeds "${STACK:-10}" \
  --min-time "$MIN_TIME" --write docs/benchmarks.md
