#!/usr/bin/env bash
# DSB2018 nuclei on a GPU, the longer schedule the CPU hour cannot give (issue 13): the instance methods one after
# the other, each for ITERS iterations (or MINUTES of training) of BATCH crops with the config's recipe otherwise
# (bf16/fp16 autocast as train.amp=auto resolves on the GPU), evaluated on the test split (the StarDist paper's 50
# images, with the config's inference protocol: the 8 symmetries for every method) and tabulated beside the
# paper's Table 1.
# Usage: [METHODS="panoptic boundary"] [MINUTES=5] [EVAL_INTERVAL=500] [WORKERS=8] [SET="model.base_channels=64 ..."] \
#          bash benchmarks/dsb2018_gpu.sh [ITERS] [BATCH] [DATA_ROOT] [DEVICE]
#   defaults: components, boundary and panoptic; 20000 iterations of 16 crops (about 27x the 25-minute CPU runs'
#   images), validation every ITERS/10; with MINUTES, train.max_minutes drives the poly schedule by the clock and
#   ends the run (ITERS, if given, is a cap) and validation runs every 1000 iterations; ../shared/datasets; cuda.
#   Also changed from the configs: warm-up ITERS/50 (at most 200) iterations, validation batches of 4.
# Results: runs/dsb2018_<method>_gpu_<ITERS or MINUTESmin>_b<BATCH>[_<SET>]/{best.pt,metrics.jsonl,test.json}, and the
# table on stdout. A killed run continues where it stopped when started again with the same arguments.
set -euo pipefail
set -f  # SET's values are not file patterns (data.crop_size=[256,256])
iters=${1:-20000}
batch=${2:-16}
data=${3:-../shared/datasets}
device=${4:-cuda}
methods=${METHODS:-components boundary panoptic}
budget=(--set train.iters="$iters")
tag=$iters
interval=${EVAL_INTERVAL:-$((iters >= 10 ? iters / 10 : 1))}
if [ -n "${MINUTES:-}" ]; then
  if ! awk -v m="$MINUTES" 'BEGIN { exit !(m > 0) }'; then
    echo "MINUTES=$MINUTES: must be a positive number of minutes" >&2
    exit 2
  fi
  iters=${1:-1000000}  # the clock decides unless ITERS is given
  budget=(--set train.iters="$iters" --set train.max_minutes="$MINUTES")
  tag=${MINUTES}min
  interval=${EVAL_INTERVAL:-1000}
fi
tag=${tag}_b${batch}
[ -n "${SET:-}" ] && tag=${tag}_$(echo "$SET" | tr " =" "_-" | tr -cd "A-Za-z0-9_.-")
warmup=$((iters / 50 < 200 ? iters / 50 : 200))
extra=(--set data.num_workers="${WORKERS:-8}")
for kv in ${SET:-}; do extra+=(--set "$kv"); done  # more config overrides
runs=()
for method in $methods; do
  run=runs/dsb2018_${method}_gpu_${tag}
  resume=(--no-progress)
  [ -f "$run/last.pt" ] && resume+=(--resume)  # a killed run continues where it stopped
  pixelwise train "configs/dsb2018_unet_${method}.yaml" --data-root "$data" --run-dir "$run" "${resume[@]}" \
    --set train.device="$device" --set data.batch_size="$batch" "${budget[@]}" \
    --set train.eval_interval="$interval" --set train.warmup_iters="$warmup" \
    --set data.val_batch_size=4 "${extra[@]}"
  pixelwise eval "$run/best.pt" --split test --data-root "$data" --device "$device" --json "$run/test.json"
  runs+=("$run")
done
python3 benchmarks/summarize_instances.py "${runs[@]}"
