#!/usr/bin/env bash
# DSB2018 nuclei on a GPU, the longer schedule the CPU hour cannot give (issue 13): the three instance methods
# (components, boundary, panoptic) one after the other, each for ITERS iterations of BATCH crops with the config's
# recipe otherwise (bf16/fp16 autocast as train.amp=auto resolves on the GPU), evaluated on the test split (the
# StarDist paper's 50 images) and tabulated beside the paper's Table 1.
# Usage: bash benchmarks/dsb2018_gpu.sh [ITERS] [BATCH] [DATA_ROOT] [DEVICE]
#   defaults: 20000 iterations of 16 crops (about 27x the 25-minute CPU runs' images), ../shared/datasets, cuda
# Results: runs/dsb2018_<method>_gpu_<ITERS>/{best.pt,metrics.jsonl,test.json}, and the table on stdout.
set -euo pipefail
iters=${1:-20000}
batch=${2:-16}
data=${3:-../shared/datasets}
device=${4:-cuda}
runs=()
for method in components boundary panoptic; do
  run=runs/dsb2018_${method}_gpu_${iters}
  resume=()
  [ -f "$run/last.pt" ] && resume=(--resume)  # a killed run continues where it stopped
  pixelwise train "configs/dsb2018_unet_${method}.yaml" --data-root "$data" --run-dir "$run" "${resume[@]}" \
    --set train.device="$device" --set train.iters="$iters" --set data.batch_size="$batch" \
    --set train.eval_interval=$((iters >= 10 ? iters / 10 : 1)) --set train.warmup_iters=$((iters / 50)) \
    --set data.num_workers=8 --set data.val_batch_size=4
  pixelwise eval "$run/best.pt" --split test --data-root "$data" --device "$device" --json "$run/test.json"
  runs+=("$run")
done
python benchmarks/summarize_instances.py "${runs[@]}"
