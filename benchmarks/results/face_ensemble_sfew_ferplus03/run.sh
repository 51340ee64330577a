#!/usr/bin/env bash
# The film-still ensemble with FER+ at 0.3 of each fine-tune's epoch instead of 0.1
# (docs/training.md, "The film-still ensemble with more FER+ in its fine-tune"). Run from the
# repository root; resumable like the script it calls.
set -euo pipefail
RUNS=outputs/train/face_ensemble_sfew_ferplus03 OUT=benchmarks/results/face_ensemble_sfew_ferplus03 \
  FERPLUS_WEIGHT=0.3 PREVIOUS=outputs/train/face_ensemble_sfew \
  exec benchmarks/results/face_ensemble_sfew/run.sh
