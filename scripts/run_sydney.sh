#!/usr/bin/env bash
# Every method with a configs/sydney_<method>.yaml: k-fold training, fold-averaged test, one results table.
#   bash scripts/run_sydney.sh              # all methods
#   bash scripts/run_sydney.sh galr [train.py args]   # one method
exec bash "$(dirname "$0")/run_dataset.sh" sydney "$@"
