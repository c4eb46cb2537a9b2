#!/usr/bin/env bash
# DSB2018 nuclei, the three instance methods one after the other on one core of this CPU, each with the same
# training-time budget, then each evaluated on the test split (the StarDist paper's 50 images).
# Usage: bash benchmarks/dsb2018_instances.sh [MINUTES] [CORE] [DATA_ROOT]
# Results: runs/dsb2018_<method>_<MINUTES>min/{best.pt,metrics.jsonl,test.json}; tabulate with
#   python benchmarks/summarize_instances.py runs/dsb2018_*_<MINUTES>min
set -euo pipefail
minutes=${1:-33}
core=${2:-1}
data=${3:-../shared/datasets}
for method in boundary panoptic components; do
  run=runs/dsb2018_${method}_${minutes}min
  OMP_NUM_THREADS=1 taskset -c "$core" pixelwise train "configs/dsb2018_unet_${method}.yaml" \
    --data-root "$data" --run-dir "$run" --no-progress \
    --set train.iters=1000000 --set train.max_minutes="$minutes" --set train.eval_interval=500 \
    --set data.num_workers=0
  OMP_NUM_THREADS=1 taskset -c "$core" pixelwise eval "$run/best.pt" --split test --data-root "$data" \
    --json "$run/test.json" --no-progress --num-workers 0
done
