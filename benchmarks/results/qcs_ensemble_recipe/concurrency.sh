#!/usr/bin/env bash
# Training throughput of one short face_v2 run alone (one torch thread, then two) and of two
# such runs at once, each one Ray Train worker at one torch thread: 1 epoch, at most 1,500
# train rows a source. Each run's metrics.csv is copied here as concurrency_<run>.csv
# (train_images_per_s, train_seconds, val_seconds). DATA (default ../shared/data).
set -euo pipefail
cd "$(dirname "$0")/../../.."
data=${DATA:-../shared/data}
here=benchmarks/results/qcs_ensemble_recipe
work=$(mktemp -d)
export RAY_AUTH_MODE=disabled
one() {  # name overrides...
  local name=$1
  shift
  .venv/bin/emotion train experiment=face_v2 data.root="$data" train.epochs=1 limit=1500 output="$work/$name" "$@" \
    > "$work/$name.log" 2>&1
  cp "$work/$name/metrics.csv" "$here/concurrency_$name.csv"
}
one alone_1thread
one alone_2threads train.torch_threads=2
one together_a & a=$!
sleep 2
one together_b & b=$!
wait $a $b
