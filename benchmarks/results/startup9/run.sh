#!/bin/bash
# The ninth measurement (benchmarks/README.md), one job at a time. Run from the repo root
# with a worktree of the code before the hot-path work beside it:
#   git worktree add ../before 4ae3c08 && benchmarks/results/startup9/run.sh
MAIN=$(pwd)
BEFORE=$(cd ../before && pwd)
set -u
export RAY_AUTH_MODE=disabled
R="$MAIN"/benchmarks/results/startup9
PY="$MAIN"/.venv/bin/python
for i in 1 2 3 4; do
  echo "== after 300 run $i $(date +%T)"
  (cd "$MAIN" && $PY benchmarks/bench_tag.py --images 300 --repeats 6 --out $R/after_300_$i.json 2>&1 | grep -E "^repeat|^ratio")
  echo "== before(4ae3c08) 300 run $i $(date +%T)"
  (cd "$BEFORE" && PYTHONPATH="$BEFORE" $PY benchmarks/bench_tag.py --images 300 2>&1 | tail -3 && cp benchmarks/bench_tag_results.json $R/before4ae3c08_300_$i.json)
done
echo "== hotpath before $(date +%T)"
(cd "$BEFORE" && PYTHONPATH="$BEFORE" $PY benchmarks/bench_hotpath.py --device cpu --photos 48 --batch 16 --workspace-backbones "" --out $R/hotpath_before4ae3c08.json 2>&1 | tail -12)
echo "== hotpath after $(date +%T)"
(cd "$MAIN" && $PY benchmarks/bench_hotpath.py --device cpu --photos 48 --batch 16 --model fer --workspace-backbones "" --out $R/hotpath_after.json 2>&1 | tail -25)
echo "== 1000 after $(date +%T)"
(cd "$MAIN" && $PY benchmarks/bench_tag.py --images 1000 --repeats 2 --out $R/after_1000.json 2>&1 | grep -E "^repeat|^ratio")
echo "== done $(date +%T)"
