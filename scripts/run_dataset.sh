#!/usr/bin/env bash
# Train and test every method configured for one dataset (or one method), then print one results table.
#   bash scripts/run_dataset.sh DATASET [METHOD [extra train.py args...]]
# Environment: NGPU (default: the number of visible GPUs; torchrun is used when > 1), OUT (default: checkpoints),
# PYTHON (default: python).
set -euo pipefail
cd "$(dirname "$0")/.."
dataset=${1:?usage: run_dataset.sh DATASET [METHOD [train.py args]]}
shift
py=${PYTHON:-python}
out=${OUT:-checkpoints}
ngpu=${NGPU:-$($py -c 'import torch; print(torch.cuda.device_count())')}
if [ $# -ge 1 ]; then
  methods=$1
  shift
else
  methods=$(ls configs/"${dataset}"_*.yaml | sed -E "s#configs/${dataset}_(.*)\.yaml#\1#")
fi
for m in $methods; do
  cfg=configs/${dataset}_${m}.yaml
  [ -f "$cfg" ] || { echo "error: no config $cfg" >&2; exit 2; }
  exp="$out/${dataset}_${m}"
  mkdir -p "$exp"
  case $m in
    *zeroshot*)  # evaluation only
      $py test.py --config "$cfg" --json "$exp/test.json" "$@"
      continue ;;
  esac
  if [ "$ngpu" -gt 1 ]; then
    torchrun --nproc_per_node "$ngpu" train.py --config "$cfg" --folds all --output-dir "$out" "$@"
  else
    $py train.py --config "$cfg" --folds all --output-dir "$out" "$@"
  fi
done
$py scripts/results_table.py "$out" --format md
