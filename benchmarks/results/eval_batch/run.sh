#!/bin/sh
# emotion eval's batch_size on this CPU: both evaluation paths (an image folder through the
# predictor, with and without find_face; a dataset's own boxes), 700 faces each, two rounds,
# batch sizes alternated. Prints each run's rate from the JSON line and the wall and sys time.
# Run from the repository root: sh benchmarks/results/eval_batch/run.sh > benchmarks/results/eval_batch/run.log
DATA=${DATA:-../shared/data}
for round in 1 2; do
  for b in 32 64 256; do
    for find in true false; do
      printf 'round %s batch %s image_folder find_face=%s: ' "$round" "$b" "$find"
      /usr/bin/time -f '%e s wall, %S s sys' .venv/bin/emotion eval data=image_folder data.root=$DATA/fer2013/val \
        limit_per_class=100 batch_size=$b detector.find_face=$find 2>&1 | grep -o '"images_per_second": [0-9.]*\|[0-9.]* s wall.*' | tr '\n' ' '
      echo
    done
    printf 'round %s batch %s ferplus boxes: ' "$round" "$b"
    /usr/bin/time -f '%e s wall, %S s sys' .venv/bin/emotion eval data=ferplus data.root=$DATA/ferplus limit=700 \
      batch_size=$b 2>&1 | grep -o '"people_per_second": [0-9.]*\|[0-9.]* s wall.*' | tr '\n' ' '
    echo
  done
done
