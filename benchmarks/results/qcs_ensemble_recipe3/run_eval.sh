#!/usr/bin/env bash
# The third run of `make train-face` (docs/training.md, "A third run, after the allocator
# change"): its metrics against the second run's, epoch by epoch, then its ensemble scored
# beside the shipped qcs_ensemble, full frame, as it ships.
# The run itself: DATA=../shared/data OUT=outputs/train/qcs_ensemble_recipe3 make train-face
set -euo pipefail
cd "$(dirname "$0")/../../.."
runs=${RUNS:-outputs/train/qcs_ensemble_recipe3}
second=benchmarks/results/qcs_ensemble_recipe2
out=benchmarks/results/qcs_ensemble_recipe3
benchmarks/results/qcs_ensemble_recipe/copy_runs.sh "$runs" "$out"
.venv/bin/python - "$second" "$out" <<'PY' 2>&1 | tee "$out/repeat.log"
import csv, sys
second, third = sys.argv[1:]
for run in ("member1", "face_v2", "member2"):
    rows = [list(csv.DictReader(open(f"{folder}/metrics_{run}.csv"))) for folder in (second, third)]
    for a, b in zip(*rows):
        same = all(f"{float(a[k]):.6g}" == f"{float(b[k]):.6g}" for k in ("train_loss", "val_score") if a[k] and b[k])
        print(f"{run} epoch {a['epoch']}: train loss {float(a['train_loss']):.6g} / {float(b['train_loss']):.6g}, "
              f"val {a['val_score'] or '-'} / {b['val_score'] or '-'}, {'same' if same else 'DIFFERENT'}")
PY
.venv/bin/python benchmarks/face_models.py --threads 2 --sets ferplus_valid,fer2013_val,expw_val \
  --model third="$runs/qcs_ensemble.ckpt" --model shipped=qcs_ensemble --pair third,shipped \
  --out "$out/reproduction.json" 2>&1 | tee "$out/reproduction.log"
