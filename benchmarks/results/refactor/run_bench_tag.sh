#!/usr/bin/env bash
# Tagging throughput before and after the layout refactor, side by side in one run:
# bench_tag.py --images 3000 from the code before (a worktree of 4b60acc at /tmp/before27,
# its own bench_tag.py, run from that folder: Ray's workers put the driver's folder first on
# their path) and from this tree, alternately; this tree
# also with face alignment off (predictor.align_faces=false), the refactor alone.
set -euo pipefail
cd "$(dirname "$0")/../../.."
out=$PWD/benchmarks/results/refactor
venv=$PWD/.venv
export RAY_AUTH_MODE=disabled
for i in 1 2; do
  (cd /tmp/before27 && PYTHONPATH=/tmp/before27 "$venv/bin/python" benchmarks/bench_tag.py --images 3000 --repeats 1 \
    --input "$out/../../../../shared/data/fer2013/val" --out "$out/bench_tag_3000_before_$i.json")
  .venv/bin/python benchmarks/bench_tag.py --images 3000 --repeats 1 --input "$PWD/../shared/data/fer2013/val" \
    --override predictor.align_faces=false --out "$out/bench_tag_3000_after_noalign_$i.json"
  .venv/bin/python benchmarks/bench_tag.py --images 3000 --repeats 1 --input "$PWD/../shared/data/fer2013/val" \
    --out "$out/bench_tag_3000_after_$i.json"
done
