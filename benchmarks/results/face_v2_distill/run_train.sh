#!/usr/bin/env bash
# Face model v2 by distillation (docs/training.md, "Distilling the ensemble into one model"):
# the teacher checkpoint, then the student's run. Run from the repository root; DATA (default
# ../shared/data) holds ferplus/, fer2013/, expw/, sfew/. Resumable: rerun after an interruption.
set -euo pipefail
data=${DATA:-../shared/data}
out=outputs/train/face_v2_distill
teacher=outputs/face_ensemble/ens_v1_v2.ckpt
[[ -f $teacher ]] || .venv/bin/emotion ensemble --out $teacher qcs_ferplus qcs_face_v2
if [[ -f $out/summary.json ]]; then echo "$out: done"; exit 0; fi
resume=false
[[ -d $out/ray ]] && resume=true
.venv/bin/emotion train experiment=face_v2_distill data.root="$data" resume=$resume
