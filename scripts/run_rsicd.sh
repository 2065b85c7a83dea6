#!/usr/bin/env bash
# Every method with a configs/rsicd_<method>.yaml: k-fold training, fold-averaged test, one results table.
#   bash scripts/run_rsicd.sh              # all methods
#   bash scripts/run_rsicd.sh galr [train.py args]   # one method
exec bash "$(dirname "$0")/run_dataset.sh" rsicd "$@"
