#!/usr/bin/env bash
# Train and test every method configured for one dataset (or one method), then print one results table of that
# dataset's runs (every OUT/<dataset>_<method> of its configs, also those of earlier calls; nothing else in OUT).
#   bash scripts/run_dataset.sh DATASET [METHOD [extra train.py args...]]
# Environment: NGPU (default: the number of visible GPUs; torchrun is used when > 1), PYTHON (default: python),
# PROFILE (default: none = configs/<dataset>_<method>.yaml; e.g. PROFILE=cpu = configs/cpu/<dataset>_<method>.yaml),
# OUT (default: checkpoints, or checkpoints/<PROFILE> with a profile), DATA_ROOT (default: the config's data.root;
# when set, passed on as --set data.root=DATA_ROOT). Each method's wall time (seconds, training and test of all its
# folds) is written to OUT/<dataset>_<method>/wall_time_s.txt. VARIANT (default: none; e.g. VARIANT=pretrained) picks
# the profile's <dataset>_<method>_<VARIANT>.yaml files instead (runs in OUT/<dataset>_<method>_<VARIANT>); without it
# the *_pretrained.yaml variants are not methods of their own.
set -euo pipefail
cd "$(dirname "$0")/.."
dataset=${1:?usage: run_dataset.sh DATASET [METHOD [train.py args]]}
shift
py=${PYTHON:-python}
profile=${PROFILE:-}
cfg_dir=configs${profile:+/$profile}
out=${OUT:-checkpoints${profile:+/$profile}}
[ -d "$cfg_dir" ] || { echo "error: no config folder $cfg_dir (PROFILE=$profile)" >&2; exit 2; }
root_args=()
[ -n "${DATA_ROOT:-}" ] && root_args=(--set "data.root=$DATA_ROOT")
ngpu=${NGPU:-$($py -c 'import torch; print(torch.cuda.device_count())')}
variant=${VARIANT:-}
tag=${variant:+_$variant}  # the config-stem suffix of the variant
if [ -n "$variant" ]; then
  all_methods=$(ls "$cfg_dir"/"${dataset}"_*"$tag".yaml 2>/dev/null | sed -E "s#${cfg_dir}/${dataset}_(.*)${tag}\.yaml#\1#" || true)
  [ -n "$all_methods" ] || { echo "error: no $cfg_dir/${dataset}_<method>$tag.yaml (VARIANT=$variant)" >&2; exit 2; }
else
  all_methods=$(ls "$cfg_dir"/"${dataset}"_*.yaml | grep -v -E '_pretrained\.yaml$' |
    sed -E "s#${cfg_dir}/${dataset}_(.*)\.yaml#\1#")
fi
if [ $# -ge 1 ]; then
  methods=$1
  shift
else
  methods=$all_methods
fi
for m in $methods; do
  cfg=$cfg_dir/${dataset}_${m}${tag}.yaml
  [ -f "$cfg" ] || { echo "error: no config $cfg" >&2; exit 2; }
  exp="$out/$(basename "$dataset")_${m}${tag}"  # the run folder: train.experiment defaults to the config's stem
  mkdir -p "$exp"
  start=$(date +%s)
  case $m in
    *zeroshot*)  # evaluation only
      $py test.py --config "$cfg" --json "$exp/test.json" ${root_args[@]+"${root_args[@]}"} "$@"
      continue ;;
  esac
  if [ "$ngpu" -gt 1 ]; then
    torchrun --nproc_per_node "$ngpu" train.py --config "$cfg" --folds all --output-dir "$out" \
      ${root_args[@]+"${root_args[@]}"} "$@"
  else
    $py train.py --config "$cfg" --folds all --output-dir "$out" ${root_args[@]+"${root_args[@]}"} "$@"
  fi
  echo $(( $(date +%s) - start )) > "$exp/wall_time_s.txt"
done
# the table: only this dataset's runs (OUT/<config stem> of every config of the dataset, run now or before)
runs=()
for m in $all_methods; do
  d="$out/$(basename "$dataset")_$m$tag"
  if [ -f "$d/summary.json" ] || ls "$d"/fold*/test.json >/dev/null 2>&1; then runs+=("$d")
  elif [ -f "$d/test.json" ]; then runs+=("$d/test.json")  # evaluation-only (zeroshot) run
  fi
done
[ ${#runs[@]} -gt 0 ] || { echo "error: no finished run of $dataset under $out" >&2; exit 1; }
$py scripts/results_table.py "${runs[@]}" --format md
