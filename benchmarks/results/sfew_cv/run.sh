#!/usr/bin/env bash
# SFEW by cross-validation (docs/training.md, "SFEW by cross-validation"): qcs_face_v2_wise
# fine-tuned briefly on a slice of its mixture plus four fifths of SFEW, once per fold, and
# the same fine-tune without SFEW (the control); then every SFEW face is scored by the run
# that held it out. Run from the repository root; DATA (default ../shared/data) holds
# ferplus/, fer2013/, expw/, sfew/. Resumable: finished runs are skipped.
set -euo pipefail
data=${DATA:-../shared/data}
runs=outputs/train/sfew_cv
train() {  # name overrides...
  local out=$runs/$1 resume=false
  shift
  if [[ -f $out/summary.json ]]; then echo "$out: done"; return; fi
  [[ -d $out/ray/run ]] && resume=true
  .venv/bin/emotion train experiment=face_v2_finetune data.root="$data" output="$out" resume=$resume \
    init_weights=qcs_face_v2_wise train.epochs=1 train.lr=1.0e-4 \
    data.sources.ferplus.weight=0.1 data.sources.expw.weight=0.5 '~data.sources.fer2013' "$@"
}
train control
for fold in 0 1 2 3 4; do
  train fold$fold data.sources.sfew.weight=2.0 data.sources.sfew.train_split=train data.sources.sfew.val_split=null \
    "data.sources.sfew.folds={count:5,held_out:$fold}"
done
.venv/bin/python benchmarks/sfew_cv.py --test-flip \
  $(for fold in 0 1 2 3 4; do echo --fold-run $runs/fold$fold/best.ckpt; done) \
  --model control=$runs/control/best.ckpt --model wise=qcs_face_v2_wise --model v1=qcs_ferplus \
  --out benchmarks/results/sfew_cv/sfew_cv.json 2>&1 | tee benchmarks/results/sfew_cv/sfew_cv.log
