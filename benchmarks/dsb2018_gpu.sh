#!/usr/bin/env bash
# DSB2018 nuclei on a GPU, the longer schedule the CPU hour cannot give (issue 13): the instance methods one after
# the other, each for ITERS iterations (or MINUTES of training) of BATCH crops with the config's recipe otherwise
# (bf16/fp16 autocast as train.amp=auto resolves on the GPU), evaluated on the test split (the StarDist paper's 50
# images, with the config's inference protocol: the 8 symmetries for every method) and tabulated beside the
# paper's Table 1.
# Usage: [METHODS="panoptic boundary"] [MINUTES=5] [EVAL_INTERVAL=500] [SET="model.base_channels=64 ..."] bash benchmarks/dsb2018_gpu.sh [ITERS] [BATCH] [DATA_ROOT] [DEVICE]
#   defaults: components, boundary and panoptic; 20000 iterations of 16 crops (about 27x the 25-minute CPU runs'
#   images); MINUTES set: train.max_minutes drives the poly schedule by the clock and ends the run (ITERS is then a
#   cap); ../shared/datasets; cuda
# Results: runs/dsb2018_<method>_gpu_<ITERS or MINUTESmin>/{best.pt,metrics.jsonl,test.json}, and the table on stdout.
set -euo pipefail
iters=${1:-20000}
batch=${2:-16}
data=${3:-../shared/datasets}
device=${4:-cuda}
methods=${METHODS:-components boundary panoptic}
budget=()
tag=$iters
if [ -n "${MINUTES:-}" ]; then
  budget=(--set train.max_minutes="$MINUTES")
  tag=${MINUTES}min
  iters=${1:-1000000}  # the clock decides unless ITERS is given
fi
[ -n "${SET:-}" ] && tag=${tag}_$(echo "$SET" | tr " =" "_-" | tr -cd "A-Za-z0-9_.-")
interval=${EVAL_INTERVAL:-$((iters >= 10 ? iters / 10 : 1))}
warmup=$((iters / 50 < 200 ? iters / 50 : 200))
extra=()
for kv in ${SET:-}; do extra+=(--set "$kv"); done  # more config overrides
runs=()
for method in $methods; do
  run=runs/dsb2018_${method}_gpu_${tag}
  resume=()
  [ -f "$run/last.pt" ] && resume=(--resume)  # a killed run continues where it stopped
  pixelwise train "configs/dsb2018_unet_${method}.yaml" --data-root "$data" --run-dir "$run" "${resume[@]}" \
    --set train.device="$device" --set train.iters="$iters" --set data.batch_size="$batch" "${budget[@]}" \
    --set train.eval_interval="$interval" --set train.warmup_iters="$warmup" \
    --set data.num_workers="${WORKERS:-8}" --set data.val_batch_size=4 "${extra[@]}" --no-progress
  pixelwise eval "$run/best.pt" --split test --data-root "$data" --device "$device" --json "$run/test.json"
  runs+=("$run")
done
python3 benchmarks/summarize_instances.py "${runs[@]}"
