#!/usr/bin/env bash
# Every method with a configs/rsitmd_<method>.yaml: k-fold training, fold-averaged test, one results table.
#   bash scripts/run_rsitmd.sh              # all methods
#   bash scripts/run_rsitmd.sh galr [train.py args]   # one method
exec bash "$(dirname "$0")/run_dataset.sh" rsitmd "$@"
