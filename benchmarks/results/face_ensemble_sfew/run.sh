#!/usr/bin/env bash
# The ensemble of the default and qcs_face_v2 fine-tuned on film stills (docs/training.md,
# "The ensemble with a member that has seen film stills"). Run from the repository root; DATA
# (default ../shared/data) holds ferplus/, fer2013/, expw/, sfew/. Resumable: finished runs
# are skipped. FERPLUS_WEIGHT (default 0.1) is FER+'s share of each fine-tune's epoch; RUNS and
# OUT place a variant's runs and results; PREVIOUS (a RUNS folder) adds that variant's
# candidate to the comparison on the directly scored sets.
set -euo pipefail
data=${DATA:-../shared/data}
runs=${RUNS:-outputs/train/face_ensemble_sfew}
out=${OUT:-benchmarks/results/face_ensemble_sfew}
ferplus_weight=${FERPLUS_WEIGHT:-0.1}
previous=()
[[ -n ${PREVIOUS:-} ]] && previous=(--model previous=$PREVIOUS/all/ensemble.ckpt --pair candidate,previous)
mkdir -p $out
train() {  # name overrides...
  local run=$runs/$1 resume=false
  shift
  if [[ ! -f $run/summary.json ]]; then
    [[ -d $run/ray/run ]] && resume=true
    .venv/bin/emotion train experiment=face_v2_finetune data.root="$data" output="$run" resume=$resume \
      init_weights=qcs_face_v2 train.epochs=1 train.lr=1.0e-4 \
      data.sources.ferplus.weight=$ferplus_weight data.sources.expw.weight=0.5 '~data.sources.fer2013' "$@"
  fi
  # The member as it ships, and the ensemble with the default.
  .venv/bin/python benchmarks/export_face_model.py $run/best.ckpt $run/export_fp16.ckpt
  .venv/bin/emotion ensemble --out $run/ensemble.ckpt qcs_ferplus $run/export_fp16.ckpt
}
sfew_train="data.sources.sfew.weight=2.0 data.sources.sfew.train_split=train data.sources.sfew.val_split=null"
train control
for fold in 0 1 2 3 4; do
  train fold$fold $sfew_train "data.sources.sfew.folds={count:5,held_out:$fold}"
done
train all $sfew_train
# SFEW: every face scored by the ensemble whose member held it out (members carry their own
# mirror averaging), against the default, the control ensemble and ens_v1_v2.
[[ -f outputs/face_ensemble/ens_v1_v2.ckpt ]] || \
  .venv/bin/emotion ensemble --out outputs/face_ensemble/ens_v1_v2.ckpt qcs_ferplus qcs_face_v2
.venv/bin/python benchmarks/sfew_cv.py \
  $(for fold in 0 1 2 3 4; do echo --fold-run $runs/fold$fold/ensemble.ckpt; done) \
  --model v1=qcs_ferplus --model control=$runs/control/ensemble.ckpt \
  --model ens_v1_v2=outputs/face_ensemble/ens_v1_v2.ckpt \
  --out $out/sfew_cv.json 2>&1 | tee $out/sfew_cv.log
# The candidate (its member trained on all of SFEW) on the other three sets.
.venv/bin/python benchmarks/face_models.py --threads 2 --sets ferplus_valid,fer2013_val,expw_val \
  --model v1=qcs_ferplus --model candidate=$runs/all/ensemble.ckpt \
  --model control=$runs/control/ensemble.ckpt --model ens_v1_v2=outputs/face_ensemble/ens_v1_v2.ckpt \
  --pair candidate,v1 --pair candidate,ens_v1_v2 --pair control,v1 "${previous[@]}" \
  --out $out/candidate.json 2>&1 | tee $out/candidate.log
