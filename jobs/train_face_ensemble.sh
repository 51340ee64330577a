#!/usr/bin/env bash
# Trains the default face model (the ensemble `qcs_ensemble`, docs/model_card_qcs_ensemble.md)
# from ImageNet weights in one command:
#
#   make train-face DATA=PATH            # PATH holds ferplus/, fer2013/, expw/, sfew/
#   DATA=PATH jobs/train_face_ensemble.sh
#
# Run it again after an interruption: finished steps are skipped and an unfinished
# training continues from its last epoch (resume=true). Steps, each one `emotion train`:
#   member1   qcs_ferplus_renderings, 16 epochs on FER+ (the recipe of `qcs_ferplus`)
#   face_v2   face_v2, 9 epochs on FER+ and ExpW (the recipe of `qcs_face_v2`)
#   member2   face_v2 fine-tuned for one epoch with SFEW's film stills (FER+ 0.3, ExpW 0.5, SFEW 2)
# then each member exported as it ships (fp16, mirror-averaged) and `emotion ensemble`
# writes OUT/qcs_ensemble.ckpt. member1 is independent of the other two, so with PARALLEL=1
# (the default) it trains beside them, each run one Ray Train worker at one torch thread:
# on 2 cores each trains about as fast as one run alone (docs/training.md). Validation is skipped
# before each run's last three epochs (train.validate_from_epoch), where its best epoch was.
#
# Settings (environment): DATA (required), OUT (default outputs/train/qcs_ensemble_recipe),
# PARALLEL (1 or 0), OVERRIDES (extra Hydra overrides for every run, e.g. "limit=64" for a
# smoke run). Wall time of every step and of each invocation goes to OUT/recipe_times.tsv.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${DATA:?set DATA to the folder that holds ferplus/, fer2013/, expw/ and sfew/}"
data=$(cd "$DATA" && pwd)
out=${OUT:-outputs/train/qcs_ensemble_recipe}
mkdir -p "$out"
out=$(cd "$out" && pwd)
parallel=${PARALLEL:-1}
read -r -a overrides <<< "${OVERRIDES:-}"
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}  # each run starts its own local Ray
times=$out/recipe_times.tsv
[[ -f $times ]] || printf 'what\tstarted\tended\tseconds\tstatus\n' > "$times"

record() {  # what started status: one row of OUT/recipe_times.tsv, ended now
  local ended
  ended=$(date +%s)
  printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$ended" $(( ended - $2 )) "$3" >> "$times"
}

timed() {  # name command...: run it and record its wall time
  local name=$1 started status=0
  shift
  started=$(date +%s)
  "$@" || status=$?
  record "$name" "$started" "$status"
  return "$status"
}

train() {  # name overrides...: one `emotion train` into OUT/name, skipped when finished
  local run=$out/$1 resume=false
  shift
  [[ -f $run/summary.json ]] && { echo "$run: finished, skipped"; return 0; }
  [[ -d $run/ray/run ]] && resume=true
  echo "$run: training (resume=$resume; log $run.log)"
  timed "${run##*/}" .venv/bin/emotion train output="$run" resume=$resume "$@" "${overrides[@]}" > "$run.log" 2>&1
}

member1() {  # threads: 1 beside member2's runs, else the experiment's 2
  train member1 experiment=qcs_ferplus_renderings data.root="$data/ferplus" data.fer2013_root="$data/fer2013" \
    train.validate_from_epoch=13 "$@"
}

member2() {
  train face_v2 experiment=face_v2 data.root="$data" train.epochs=9 train.validate_from_epoch=6
  train member2 experiment=face_v2_finetune data.root="$data" init_weights="$out/face_v2/best.ckpt" \
    train.epochs=1 train.lr=1.0e-4 data.sources.ferplus.weight=0.3 data.sources.expw.weight=0.5 \
    '~data.sources.fer2013' data.sources.sfew.weight=2.0 data.sources.sfew.train_split=train \
    data.sources.sfew.val_split=null
}

started=$(date +%s)
printf 'invocation_start\t%s\t\t\t\n' "$started" >> "$times"  # an invocation cut short has this row only
if [[ $parallel == 1 ]]; then
  member1 train.torch_threads=1 & first=$!
  member2 & second=$!
  status=0
  wait $first || status=$?
  wait $second || status=$?
  (( status == 0 )) || { echo "a training failed: see $out/*.log" >&2; exit "$status"; }
else
  member1
  member2
fi
.venv/bin/python benchmarks/export_face_model.py --no-prior "$out/member1/best.ckpt" "$out/member1/export_fp16.ckpt"
.venv/bin/python benchmarks/export_face_model.py "$out/member2/best.ckpt" "$out/member2/export_fp16.ckpt"
.venv/bin/emotion ensemble --out "$out/qcs_ensemble.ckpt" "$out/member1/export_fp16.ckpt" "$out/member2/export_fp16.ckpt"
record invocation "$started" 0
echo "wrote $out/qcs_ensemble.ckpt; wall times in $times"
