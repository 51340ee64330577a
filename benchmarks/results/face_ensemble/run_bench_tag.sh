#!/usr/bin/env bash
# Whole `emotion tag` pipeline (RetinaFace, then the face model) on the first 1,000 FER2013 val
# images: the default against the ensemble checkpoint of run_checkpoint.sh, one after the other,
# twice, each beside a plain loop over the same predictor (benchmarks/bench_tag.py).
set -euo pipefail
cd "$(dirname "$0")/../../.."
out=$PWD/benchmarks/results/face_ensemble
export RAY_AUTH_MODE=disabled
[[ -f outputs/face_ensemble/ens_v1_v2.ckpt ]] || \
  .venv/bin/emotion ensemble --out outputs/face_ensemble/ens_v1_v2.ckpt qcs_ferplus qcs_face_v2
for i in 1 2; do
  .venv/bin/python benchmarks/bench_tag.py --images 1000 --repeats 1 --input "$PWD/../shared/data/fer2013/val" \
    --out "$out/bench_tag_default_$i.json"
  .venv/bin/python benchmarks/bench_tag.py --images 1000 --repeats 1 --input "$PWD/../shared/data/fer2013/val" \
    --override model=face_ensemble --override model.checkpoint=$PWD/outputs/face_ensemble/ens_v1_v2.ckpt \
    --out "$out/bench_tag_ensemble_$i.json"
done
