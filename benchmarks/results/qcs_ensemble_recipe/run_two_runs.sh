#!/usr/bin/env bash
# Both runs of the default's recipe averaged: the shipped qcs_ensemble's two members and the
# two that `make train-face` made, as one four-member ensemble, scored beside qcs_ensemble
# and qcs_ferplus on FER2013Valid, FER2013 val and ExpW val, full frame, every model as it
# ships (docs/training.md, "Both runs of the recipe, averaged"). Run from anywhere; RUNS
# (default outputs/train/qcs_ensemble_recipe) is the recipe's OUT, SHIPPED_MEMBER2 the
# shipped ensemble's second member (its path is in qcs_ensemble.ckpt's extra.members).
set -euo pipefail
cd "$(dirname "$0")/../../.."
runs=${RUNS:-outputs/train/qcs_ensemble_recipe}
shipped_member2=${SHIPPED_MEMBER2:-outputs/train/face_ensemble_sfew_ferplus03/all/export_fp16.ckpt}
out=benchmarks/results/qcs_ensemble_recipe
.venv/bin/emotion ensemble --out "$runs/ens_two_runs.ckpt" \
  qcs_ferplus "$shipped_member2" "$runs/member1/export_fp16.ckpt" "$runs/member2/export_fp16.ckpt"
.venv/bin/python benchmarks/face_models.py --threads 2 --sets ferplus_valid,fer2013_val,expw_val \
  --model two_runs="$runs/ens_two_runs.ckpt" --model shipped=qcs_ensemble --model v1=qcs_ferplus \
  --pair two_runs,shipped --pair two_runs,v1 \
  --out "$out/two_runs.json" 2>&1 | tee "$out/two_runs.log"
