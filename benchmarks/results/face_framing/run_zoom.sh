#!/usr/bin/env bash
# The zoom-out fine-tune of both members of the default, then the candidate against the
# default (docs/training.md, "Zoom-out fine-tune of both members"). Run from the repository
# root; DATA (default ../shared/data) holds ferplus/, fer2013/, expw/, sfew/. Resumable:
# finished runs are skipped. The two fine-tunes run side by side at one thread each.
# SCALE is the augmentation's zoom range (a window larger than the crop, max_scale > 1,
# shrinks the face); NAME names the runs and result files. The two runs reported:
#   SCALE=train.augment.min_scale=0.5 NAME=zoom       (zooms in: the face up to twice as large)
#   SCALE=train.augment.max_scale=2.0 NAME=zoom_out   (the face as small as half the frame)
set -euo pipefail
data=${DATA:-../shared/data}
scale=${SCALE:-train.augment.max_scale=2.0}
name=${NAME:-zoom_out}
runs=${RUNS:-outputs/train/face_$name}
out=$(dirname "$0")
member2_start=${MEMBER2_START:-outputs/train/face_ensemble_sfew_ferplus03/all/best.ckpt}
mkdir -p "$runs"
train() {  # name overrides...
  local run=$runs/$1 resume=false
  shift
  [[ -f $run/summary.json ]] && return 0
  [[ -d $run/ray/run ]] && resume=true
  /usr/bin/time -f "${run##*/} %e s" .venv/bin/emotion train experiment=face_v2_finetune data.root="$data" output="$run" \
    resume=$resume train.epochs=1 train.lr=1.0e-4 train.torch_threads=1 "$scale" \
    '~data.sources.fer2013' "$@" > "$run.log" 2>&1
}
train member1 init_weights=qcs_ferplus data.sources.ferplus.weight=0.3 data.sources.expw.weight=0 \
  '~data.sources.sfew' & first=$!
train member2 init_weights="$member2_start" data.sources.ferplus.weight=0.3 data.sources.expw.weight=0.5 \
  data.sources.sfew.weight=2.0 data.sources.sfew.train_split=train data.sources.sfew.val_split=null & second=$!
wait $first
wait $second
for member in member1 member2; do
  flags=(); [[ $member == member1 ]] && flags=(--no-prior)  # member 1 saw FER+ alone
  .venv/bin/python benchmarks/export_face_model.py "$runs/$member/best.ckpt" "$runs/$member/export_fp16.ckpt" "${flags[@]}"
done
.venv/bin/emotion ensemble --out "$runs/ens_$name.ckpt" "$runs/member1/export_fp16.ckpt" "$runs/member2/export_fp16.ckpt"
.venv/bin/python benchmarks/face_models.py --threads 2 --sets ferplus_valid,fer2013_val,expw_val \
  --model ens=qcs_ensemble --model $name="$runs/ens_$name.ckpt" --pair $name,ens \
  --out "$out/${name}_full_frame.json" 2>&1 | tee "$out/${name}_full_frame.log"
.venv/bin/python benchmarks/face_framing.py --threads 2 --sets ferplus_valid,expw_val --fractions 1.0,0.8,0.6 \
  --model ens=qcs_ensemble --model $name="$runs/ens_$name.ckpt" --pair $name,ens \
  --out "$out/${name}_framing.json" 2>&1 | tee "$out/${name}_framing.log"
