#!/usr/bin/env bash
# The distilled student as it would ship (fp16, mirror-averaged), scored beside the default,
# the teacher (ens_v1_v2) and qcs_face_v2_wise in one run. Run from the repository root after
# run_train.sh.
set -euo pipefail
out=benchmarks/results/face_v2_distill
run=outputs/train/face_v2_distill
.venv/bin/python benchmarks/export_face_model.py $run/best.ckpt $run/export_fp16.ckpt
cp $run/metrics.csv $run/summary.json $out/
.venv/bin/python benchmarks/face_models.py --threads 2 \
  --model v1=qcs_ferplus --model wise=qcs_face_v2_wise --model teacher=outputs/face_ensemble/ens_v1_v2.ckpt \
  --model student=$run/export_fp16.ckpt \
  --pair student,v1 --pair student,wise --pair student,teacher \
  --out "$out/candidates.json" 2>&1 | tee "$out/candidates.log"
