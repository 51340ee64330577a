#!/usr/bin/env bash
# The default ensemble without mirror averaging (docs/training.md, "The ensemble without
# mirror averaging"): the same files with test_flip false in both members, scored against the
# shipped ensemble and qcs_ferplus. Needs the fold runs of
# benchmarks/results/face_ensemble_sfew_ferplus03/run.sh. DATA (default ../shared/data).
set -euo pipefail
cd "$(dirname "$0")/../../.."
data=${DATA:-../shared/data}
runs=outputs/train/face_ensemble_sfew_ferplus03
out=benchmarks/results/qcs_ensemble
work=outputs/qcs_ensemble_noflip
mkdir -p $work
noflip() { .venv/bin/python benchmarks/ensemble_member_cfg.py "$1" "$2" test_flip=false; }
noflip qcs_ensemble $work/qcs_ensemble_noflip.ckpt
flip_folds=() noflip_folds=()
for fold in 0 1 2 3 4; do
  noflip $runs/fold$fold/ensemble.ckpt $work/fold$fold.ckpt
  flip_folds+=($runs/fold$fold/ensemble.ckpt) noflip_folds+=($work/fold$fold.ckpt)
done
# SFEW: every face by the fold ensemble that held it out, without and with mirror averaging.
.venv/bin/python benchmarks/sfew_cv.py $(printf -- '--fold-run %s ' "${noflip_folds[@]}") \
  --cv-model flip=$(IFS=,; echo "${flip_folds[*]}") --model v1=qcs_ferplus \
  --data $data/sfew --out $out/without_flip_sfew_cv.json 2>&1 | tee $out/without_flip_sfew_cv.log
# The other three sets, each model as it ships (qcs_ferplus mirror-averaged).
.venv/bin/python benchmarks/face_models.py --threads 2 --data $data --sets ferplus_valid,fer2013_val,expw_val \
  --model v1=qcs_ferplus --model flip=qcs_ensemble --model noflip=$work/qcs_ensemble_noflip.ckpt \
  --pair noflip,v1 --pair noflip,flip --pair flip,v1 \
  --out $out/without_flip.json 2>&1 | tee $out/without_flip.log
