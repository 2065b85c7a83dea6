#!/usr/bin/env bash
# Every method with a configs/ucm_<method>.yaml: k-fold training, fold-averaged test, one results table.
#   bash scripts/run_ucm.sh                        # all methods, full (paper-sized) configs
#   bash scripts/run_ucm.sh galr [train.py args]   # one method
#   PROFILE=cpu bash scripts/run_ucm.sh [METHOD]   # the CPU profiles configs/cpu/ucm_<method>.yaml (random init,
#                                                  # small; data.root ../shared/data/ucm unless DATA_ROOT is set),
#                                                  # runs under checkpoints/cpu/ unless OUT is set
#   PRETRAINED=1 bash scripts/run_ucm.sh [METHOD]  # the CPU profiles with real pretrained parts,
#                                                  # configs/cpu/ucm_<method>_pretrained.yaml (ImageNet EfficientNet-Lite0
#                                                  # image towers, all-MiniLM-L6-v2 where the text side is BERT-family;
#                                                  # weights from the pip packages of requirements.txt), runs under
#                                                  # checkpoints/cpu/ucm_<method>_pretrained/ (PROFILE=cpu is implied)
# KAMCL's tag files: with PROFILE=cpu they are built into checkpoints/ucm_tags/ from the UCM training captions
# (scripts/build_tags.py) when absent. Other variables: see scripts/run_dataset.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PRETRAINED:-}" ] && [ "${PRETRAINED}" != 0 ]; then
  export PROFILE=${PROFILE:-cpu} VARIANT=pretrained  # the pretrained profiles build their KAMCL tags in the run
elif [ "${PROFILE:-}" = cpu ] && { [ $# -eq 0 ] || [ "$1" = kamcl ]; }; then
  tags=checkpoints/ucm_tags
  if [ ! -f "$tags/tags_label_th_1.txt" ] || [ ! -f "$tags/tags_label_th_1/tag_vocab_512.json" ]; then
    "${PYTHON:-python}" scripts/build_tags.py --precomp "${DATA_ROOT:-../shared/data/ucm}/ucm_precomp" \
      --out "$tags"
  fi
fi
exec bash scripts/run_dataset.sh ucm "$@"
