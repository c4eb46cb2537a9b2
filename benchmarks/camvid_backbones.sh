#!/usr/bin/env bash
# CamVid: the zoo's DeepLab v3+ MobileNetV2 against the same head on a timm encoder, same recipe and the same
# training-time budget, one after the other on one core, then each evaluated on the test split.
# Usage: bash benchmarks/camvid_backbones.sh [MINUTES] [CORE] [DATA_ROOT]
set -euo pipefail
minutes=${1:-20}
core=${2:-0}
data=${3:-../shared/datasets}
for cfg in camvid_deeplabv3plus_mobilenetv2_os16 camvid_deeplabv3plus_timm_mobilenetv3_os16; do
  run=runs/${cfg}_${minutes}min
  OMP_NUM_THREADS=1 taskset -c "$core" pixelwise train "configs/$cfg.yaml" --data-root "$data" --run-dir "$run" \
    --no-progress --set train.iters=1000000 --set train.max_minutes="$minutes" --set data.num_workers=0
  OMP_NUM_THREADS=1 taskset -c "$core" pixelwise eval "$run/best.pt" --split test --data-root "$data" \
    --json "$run/test.json" --no-progress --num-workers 0
done
