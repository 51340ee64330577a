#!/usr/bin/env bash
# Face model v2 fine-tune: export the candidate as it would ship (fp16, mirror-averaged) and
# score it beside the default (v1), the from-scratch v2 and both fp32 twins, in one run.
# Run from the repository root after `emotion train experiment=face_v2_finetune data.root=DATA`.
set -euo pipefail
out=benchmarks/results/face_v2_finetune
candidate=outputs/train/face_v2_finetune/export_fp16.ckpt
# The class prior is the mixture's (the same sources and weights as face_v2's run), stored for
# users who turn the prior correction on; it is off (prior_correction 0).
.venv/bin/python -c "
import json
from emotion.checkpoint import export_weights
prior = json.load(open('benchmarks/results/face_v2/class_prior.json'))
export_weights('outputs/train/face_v2_finetune/best.ckpt', '$candidate', half=True,
               model_cfg_updates={'test_flip': True, 'class_prior': prior, 'prior_correction': 0.0})"
# Points on the line between the default and the fine-tuned model (WiSE-FT), each exported
# as it would ship.
for alpha in 0.25 0.5 0.75; do
  .venv/bin/python -c "
import json
from emotion.checkpoint import export_weights
from emotion.training.interpolation import interpolate_checkpoints
prior = json.load(open('benchmarks/results/face_v2/class_prior.json'))
mid = interpolate_checkpoints('qcs_ferplus', 'outputs/train/face_v2_finetune/best.ckpt', $alpha,
                              'outputs/train/face_v2_finetune/wise_$alpha.ckpt')
export_weights(mid, 'outputs/train/face_v2_finetune/wise_${alpha}_fp16.ckpt', half=True,
               model_cfg_updates={'test_flip': True, 'class_prior': prior, 'prior_correction': 0.0})"
done
w=outputs/train/face_v2_finetune
.venv/bin/python benchmarks/face_models.py --threads 2 \
  --model w25=$w/wise_0.25_fp16.ckpt --model w50=$w/wise_0.5_fp16.ckpt --model w75=$w/wise_0.75_fp16.ckpt \
  --model v1=qcs_ferplus --model v2=qcs_face_v2 --model ft="$candidate" \
  --model ft_fp32=outputs/train/face_v2_finetune/best.ckpt --cfg 'ft_fp32={"test_flip": true}' \
  --model v2_fp32=outputs/train/face_v2/best.ckpt --cfg 'v2_fp32={"test_flip": true}' \
  --pair ft,v1 --pair w25,v1 --pair w50,v1 --pair w75,v1 --pair ft,v2 --pair ft,ft_fp32 --pair v2,v2_fp32 --pair v2,v1 \
  --out "$out/candidates.json" 2>&1 | tee "$out/candidates.log"
