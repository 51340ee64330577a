#!/usr/bin/env bash
# Face model v2 ablations, run from the repository root:
#  datasets  - the fine-tune on FER+ alone (ExpW weight 0) against the fine-tune on the
#              mixture, both alpha 1 and exported as they would ship, with the default;
#              trained by: emotion train experiment=face_v2_finetune data.root=DATA
#                          data.sources.expw.weight=0 output=outputs/train/ablation_finetune_ferplus_only
#  alignment - RetinaFace finds the face in ExpW val and SFEW; each model is scored on the
#              aligned face (5-landmark similarity transform) and on the box crop.
set -euo pipefail
out=benchmarks/results/face_v2_finetune
abl=outputs/train/ablation_finetune_ferplus_only
.venv/bin/python -c "
import json
from emotion.checkpoint import export_weights
prior = json.load(open('benchmarks/results/face_v2/class_prior.json'))
export_weights('$abl/best.ckpt', '$abl/export_fp16.ckpt', half=True,
               model_cfg_updates={'test_flip': True, 'class_prior': prior, 'prior_correction': 0.0})"
.venv/bin/python benchmarks/face_models.py --threads 2 \
  --model v1=qcs_ferplus --model ft_mixture=outputs/train/face_v2_finetune/export_fp16.ckpt \
  --model ft_ferplus_only=$abl/export_fp16.ckpt \
  --pair ft_mixture,ft_ferplus_only --pair ft_ferplus_only,v1 --pair ft_mixture,v1 \
  --out "$out/ablation_datasets.json" 2>&1 | tee "$out/ablation_datasets.log"
.venv/bin/python benchmarks/face_models.py --threads 2 --detector retinaface --sets expw_val,sfew \
  --model v1=qcs_ferplus --model wise=qcs_face_v2_wise \
  --pair wise@aligned,wise@boxes --pair v1@aligned,v1@boxes --pair wise@aligned,v1@aligned \
  --out "$out/ablation_alignment.json" 2>&1 | tee "$out/ablation_alignment.log"
