#!/usr/bin/env bash
# The ensemble that `make train-face` made, scored beside the shipped qcs_ensemble and
# qcs_ferplus on FER2013Valid, FER2013 val and ExpW val, full frame, every model as it ships
# (docs/training.md, "One command for the default, and its wall time"). Run from anywhere;
# RUNS (default outputs/train/qcs_ensemble_recipe) is the recipe's OUT.
set -euo pipefail
cd "$(dirname "$0")/../../.."
runs=${RUNS:-outputs/train/qcs_ensemble_recipe}
out=benchmarks/results/qcs_ensemble_recipe
benchmarks/results/qcs_ensemble_recipe/copy_runs.sh "$runs" "$out"
.venv/bin/python benchmarks/face_models.py --threads 2 --sets ferplus_valid,fer2013_val,expw_val \
  --model shipped=qcs_ensemble --model recipe="$runs/qcs_ensemble.ckpt" --model v1=qcs_ferplus \
  --pair recipe,shipped --pair recipe,v1 --pair shipped,v1 \
  --out "$out/reproduction.json" 2>&1 | tee "$out/reproduction.log"
