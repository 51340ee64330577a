#!/bin/sh
# The allocator setting (emotion/allocator.py) against glibc's own (EMOTION_MALLOC=system),
# side by side: each measurement runs both ways back to back, two rounds.
#   1. emotion eval, image folder through the predictor (find_face on), 700 FER2013 val faces, batch 32 and 256
#   2. emotion eval, FER+ faces cut from their boxes, 700 faces, batch 32
#   3. bench_tag.py: the emotion tag pipeline and the plain loop, the first 1,000 FER2013 val images
#   4. emotion train experiment=qcs_ferplus, 3,000 FER+ faces, one epoch (train_images_per_s)
# Run from the repository root on a quiet machine:
#   sh benchmarks/results/allocator/run.sh > benchmarks/results/allocator/run.log 2>&1
DATA=${DATA:-../shared/data}
OUT=benchmarks/results/allocator
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}
rate() { grep -o '"images_per_second": [0-9.]*\|"people_per_second": [0-9.]*\|[0-9.]* s wall.*' | tr '\n' ' '; }
for round in 1 2; do
  for malloc in kept system; do
    if [ $malloc = system ]; then export EMOTION_MALLOC=system; else unset EMOTION_MALLOC; fi
    for b in 32 256; do
      printf 'round %s malloc=%s eval image_folder batch %s: ' $round $malloc $b
      /usr/bin/time -f '%e s wall, %U s user, %S s sys' .venv/bin/emotion eval data=image_folder \
        data.root=$DATA/fer2013/val limit_per_class=100 batch_size=$b 2>&1 | rate; echo
    done
    printf 'round %s malloc=%s eval ferplus boxes batch 32: ' $round $malloc
    /usr/bin/time -f '%e s wall, %U s user, %S s sys' .venv/bin/emotion eval data=ferplus data.root=$DATA/ferplus \
      limit=700 batch_size=32 2>&1 | rate; echo
    rm -rf /tmp/allocator_train
    .venv/bin/emotion train experiment=qcs_ferplus data.root=$DATA/ferplus limit=3000 train.epochs=1 \
      output=/tmp/allocator_train > /dev/null 2>&1
    printf 'round %s malloc=%s train qcs_ferplus, train_images_per_s: ' $round $malloc
    tail -1 /tmp/allocator_train/metrics.csv | cut -d, -f6; echo
    .venv/bin/python benchmarks/bench_tag.py --images 1000 --repeats 1 --detector full_frame \
      --out $OUT/bench_tag_${malloc}_round$round.json 2>&1 | grep "^repeat" | sed "s/^/round $round malloc=$malloc bench_tag /"
  done
done
