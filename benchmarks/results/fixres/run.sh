#!/usr/bin/env bash
# The FER+ member fine-tuned at a larger input (docs/training.md, "A larger input for the
# FER+ member, fine-tuned"). Run from the repository root; DATA (default ../shared/data)
# holds ferplus/, fer2013/, expw/. Resumable: finished runs are skipped.
set -euo pipefail
data=${DATA:-../shared/data}
runs=${RUNS:-outputs/train/fixres}
out=${OUT:-benchmarks/results/fixres}
mkdir -p $out
finetune() {  # name input_size
  local run=$runs/$1 resume=false
  if [[ ! -f $run/summary.json ]]; then
    [[ -d $run/ray/run ]] && resume=true
    .venv/bin/emotion train experiment=qcs_ferplus_renderings data.root="$data/ferplus" \
      data.fer2013_root="$data/fer2013" output="$run" resume=$resume init_weights=qcs_ferplus \
      model.input_size=$2 train.epochs=3 train.lr=1.0e-4 train.warmup_epochs=0
  fi
  .venv/bin/python benchmarks/export_face_model.py --no-prior $run/best.ckpt $run/export_fp16.ckpt
}
finetune fixres96 96
finetune fixres80 80
.venv/bin/python benchmarks/face_models.py --threads 2 --sets ferplus_valid,fer2013_val,expw_val \
  --model qcs_ferplus=qcs_ferplus --model fixres96=$runs/fixres96/export_fp16.ckpt \
  --model fixres80=$runs/fixres80/export_fp16.ckpt \
  --pair fixres96,fixres80 --pair fixres96,qcs_ferplus --pair fixres80,qcs_ferplus \
  --out $out/fixres.json 2>&1 | tee $out/fixres.log
