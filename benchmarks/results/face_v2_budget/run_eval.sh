#!/usr/bin/env bash
# Backbone and input size at equal CPU budget: each run's best checkpoint exported as it would
# ship (fp16, mirror-averaged) and scored full frame beside the default, in one run, with a
# paired bootstrap against today's backbone and size (budget_mnv2_80). Run from the repository
# root after run_train.sh.
set -euo pipefail
out=benchmarks/results/face_v2_budget
args=()
for name in mnv2_80 mnv2_64 lite0_64 lite0_64_matched; do
  run=outputs/train/budget_$name
  .venv/bin/python -c "
from emotion.checkpoint import export_weights
export_weights('$run/best.ckpt', '$run/export_fp16.ckpt', half=True, model_cfg_updates={'test_flip': True})"
  cp "$run/metrics.csv" "$out/metrics_$name.csv"
  cp "$run/summary.json" "$out/summary_$name.json"
  args+=(--model "$name=$run/export_fp16.ckpt")
done
.venv/bin/python benchmarks/face_models.py --threads 2 --model v1=qcs_ferplus "${args[@]}" \
  --pair mnv2_64,mnv2_80 --pair lite0_64,mnv2_80 --pair lite0_64_matched,mnv2_80 --pair lite0_64_matched,mnv2_64 \
  --out "$out/backbone_size.json" 2>&1 | tee "$out/backbone_size.log"
