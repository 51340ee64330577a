#!/usr/bin/env bash
# Whole `emotion tag` pipeline (RetinaFace, then the face model) on the first 1,000 FER2013 val
# images: the default face model (qcs_ensemble) against the single model it replaced
# (qcs_ferplus), one after the other, twice, each beside a plain loop over the same predictor
# (benchmarks/bench_tag.py). DATA (default ../shared/data) holds fer2013/.
set -euo pipefail
cd "$(dirname "$0")/../../.."
data=${DATA:-$PWD/../shared/data}
out=$PWD/benchmarks/results/qcs_ensemble
export RAY_AUTH_MODE=disabled
for i in 1 2; do
  .venv/bin/python benchmarks/bench_tag.py --images 1000 --repeats 1 --input "$data/fer2013/val" \
    --out "$out/bench_tag_qcs_ensemble_$i.json"
  .venv/bin/python benchmarks/bench_tag.py --images 1000 --repeats 1 --input "$data/fer2013/val" \
    --override model=qcs --override model.checkpoint=qcs_ferplus --out "$out/bench_tag_qcs_ferplus_$i.json"
done
