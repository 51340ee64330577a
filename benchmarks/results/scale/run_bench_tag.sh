#!/usr/bin/env bash
# Tagging throughput before and after the streaming inputs, side by side in one run:
# bench_tag.py --images 3000 from the code before (a worktree of 2c1edbc at /tmp/before,
# its own bench_tag.py, put first on PYTHONPATH) and from this tree, alternately; then this
# tree with every input forced through the listing tasks (inline_inputs=0).
set -euo pipefail
cd "$(dirname "$0")/../../.."
out=benchmarks/results/scale
export RAY_AUTH_MODE=disabled
for i in 1 2; do
  PYTHONPATH=/tmp/before .venv/bin/python /tmp/before/benchmarks/bench_tag.py --images 3000 --repeats 1 --input "$PWD/../shared/data/fer2013/val" \
    --out "$out/bench_tag_3000_before_$i.json"
  .venv/bin/python benchmarks/bench_tag.py --images 3000 --repeats 1 --input "$PWD/../shared/data/fer2013/val" --out "$out/bench_tag_3000_after_$i.json"
  .venv/bin/python benchmarks/bench_tag.py --images 3000 --repeats 1 --input "$PWD/../shared/data/fer2013/val" --override inline_inputs=0 \
    --out "$out/bench_tag_3000_streaming_$i.json"
done
