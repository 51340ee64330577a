#!/usr/bin/env bash
# The second run of `make train-face` (OUT=outputs/train/qcs_ensemble_recipe2), scored beside
# the shipped qcs_ensemble and the first run's ensemble on FER2013Valid, FER2013 val and ExpW
# val, full frame, every model as it ships (docs/training.md, "A second run of the command").
# The run itself: DATA=../shared/data OUT=outputs/train/qcs_ensemble_recipe2 make train-face
set -euo pipefail
cd "$(dirname "$0")/../../.."
runs=${RUNS:-outputs/train/qcs_ensemble_recipe2}
first=${FIRST:-outputs/train/qcs_ensemble_recipe}
out=benchmarks/results/qcs_ensemble_recipe2
benchmarks/results/qcs_ensemble_recipe/copy_runs.sh "$runs" "$out"
.venv/bin/python benchmarks/face_models.py --threads 2 --sets ferplus_valid,fer2013_val,expw_val \
  --model second="$runs/qcs_ensemble.ckpt" --model shipped=qcs_ensemble --model first="$first/qcs_ensemble.ckpt" \
  --pair second,shipped --pair second,first --pair first,shipped \
  --out "$out/reproduction.json" 2>&1 | tee "$out/reproduction.log"
