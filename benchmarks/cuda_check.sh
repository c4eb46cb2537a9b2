#!/usr/bin/env bash
# The GPU checks in one run, for a machine with a CUDA device (CI has none):
#   1. the CUDA tests (tests/test_cuda.py: models on the GPU vs the CPU, fp16 autocast, dense CRF, metrics,
#      fp16 + GradScaler and bf16 training, GPU vs CPU evaluation, deterministic mode, torchrun/NCCL/SyncBN);
#   2. benchmarks/speed.py on the GPU: batch 1 latency and batch 16 throughput at 512x512, training steps,
#      peak memory, then the torch.compile variant (bounded by a timeout: compilation can take minutes).
# Check the tests' own logic first on any machine: PIXELWISE_TEST_DEVICE=cpu python -m pytest -m cuda
# Usage, from the repository root, with pixelwise and the peers importable (pip install -e '.[test,bench]'):
#   OUT=results_dir bash benchmarks/cuda_check.sh
set -uo pipefail
OUT=${OUT:-benchmarks/results/cuda}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -c "import torch, torchvision, timm; print('torch', torch.__version__, 'torchvision', torchvision.__version__,
'timm', timm.__version__, torch.cuda.get_device_name(0))" 2>&1 | tee "$OUT/env.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv | tee -a "$OUT/env.txt"

# (every step tees its log and has a timeout: a hang still leaves what it printed)
timeout 600 python3 -m pytest -v -m cuda tests/test_cuda.py tests/test_panoptic_postprocess.py -p no:cacheprovider -rs 2>&1 | tee "$OUT/pytest_cuda.log"

timeout 300 python3 benchmarks/speed.py --device cuda --size 512 --batch 1 --repeats 30 --train-size 512 --train-batch 8 \
    --no-compile --out "$OUT/speed_b1.json" 2>&1 | tee "$OUT/speed_cuda.log"
timeout 300 python3 benchmarks/speed.py --device cuda --size 512 --batch 16 --repeats 20 --train-size 512 --train-batch 16 \
    --no-compile --out "$OUT/speed_b16.json" 2>&1 | tee -a "$OUT/speed_cuda.log"
timeout "${COMPILE_TIMEOUT:-240}" python3 benchmarks/speed.py --device cuda --size 512 --batch 1 --repeats 30 \
    --train-size 512 --train-batch 8 --out "$OUT/speed_compile_b1.json" 2>&1 | tee -a "$OUT/speed_cuda.log"
echo "done"
