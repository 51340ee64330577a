#!/usr/bin/env bash
# The chosen ensemble as users build it (`emotion ensemble`, one fp16 checkpoint), scored as one
# model beside the default: its accuracies must equal the candidates run's ens_v1_v2, and its
# faces/s is the ensemble's own. Run from the repository root.
set -euo pipefail
out=benchmarks/results/face_ensemble
.venv/bin/emotion ensemble --out outputs/face_ensemble/ens_v1_v2.ckpt qcs_ferplus qcs_face_v2
.venv/bin/python benchmarks/face_models.py --threads 2 \
  --model v1=qcs_ferplus --model ens_v1_v2=outputs/face_ensemble/ens_v1_v2.ckpt --pair ens_v1_v2,v1 \
  --out "$out/checkpoint.json" 2>&1 | tee "$out/checkpoint.log"
