#!/usr/bin/env bash
# Backbone and input size at equal CPU budget (docs/training.md, "Ablations of face model v2"):
# three runs of face_v2's recipe from ImageNet, each epoch half of FER+ (the same half) and
# ExpW once, epochs set so each run buys the same training compute. Run from the repository
# root with DATA (default ../shared/data) holding ferplus/, fer2013/, expw/, sfew/. Resumable:
# a run already finished is skipped, one cut off is continued from its latest checkpoint.
set -euo pipefail
data=${DATA:-../shared/data}
train() {  # name backbone input_size epochs
  local out=outputs/train/budget_$1 resume=false
  if [[ -f $out/summary.json ]]; then echo "$1: done"; return; fi
  [[ -d $out/ray/run ]] && resume=true
  .venv/bin/emotion train experiment=face_v2 data.root="$data" output="$out" resume=$resume \
    data.sources.ferplus.weight=0.5 data.sources.expw.weight=1.0 \
    model.backbone="$2" model.input_size="$3" train.epochs="$4"
}
train mnv2_80 mobilenet_v2 80 4
train mnv2_64 mobilenet_v2 64 7
train lite0_64 efficientnet_lite0 64 3
train lite0_64_matched efficientnet_lite0 64 5   # the job's measured rate: 5 epochs buy what the others had
