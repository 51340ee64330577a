#!/usr/bin/env bash
# copy_runs.sh RUNS OUT: a `make train-face` output's timing rows and each run's metrics and
# summary, copied next to its results (OUT/recipe_times.tsv, metrics_<run>.csv, summary_<run>.json).
set -euo pipefail
runs=$1 out=$2
cp "$runs/recipe_times.tsv" "$out/recipe_times.tsv"
for run in member1 face_v2 member2; do
  cp "$runs/$run/metrics.csv" "$out/metrics_$run.csv"
  cp "$runs/$run/summary.json" "$out/summary_$run.json"
done
