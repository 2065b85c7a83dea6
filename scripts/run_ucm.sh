#!/usr/bin/env bash
# Every method with a configs/ucm_<method>.yaml: k-fold training, fold-averaged test, one results table.
#   bash scripts/run_ucm.sh              # all methods
#   bash scripts/run_ucm.sh galr [train.py args]   # one method
exec bash "$(dirname "$0")/run_dataset.sh" ucm "$@"
