#!/usr/bin/env bash
# Ensembles of the shipped face models (docs/training.md, "Ensembles of the shipped models"):
# the three shipped weights and the three candidates fixed before this run, on the same faces,
# full frame, with paired bootstrap against the default. Run from the repository root.
set -euo pipefail
out=benchmarks/results/face_ensemble
.venv/bin/python benchmarks/face_models.py --threads 2 \
  --model v1=qcs_ferplus --model v2=qcs_face_v2 --model wise=qcs_face_v2_wise \
  --ensemble ens_v1_v2=v1+v2 --ensemble ens_v1_wise=v1+wise --ensemble ens_all=v1+v2+wise \
  --pair ens_v1_v2,v1 --pair ens_v1_wise,v1 --pair ens_all,v1 --pair ens_v1_v2,wise --pair ens_all,ens_v1_v2 \
  --out "$out/candidates.json" 2>&1 | tee "$out/candidates.log"
