"""Cross-validated score of a face model trained with a mixture source cut into folds
(``data.sources.<name>.folds``): each face is predicted by the one run that held its fold
out, and those out-of-fold predictions are compared, face by face, with models that never
saw the source (paired bootstrap).

    .venv/bin/python benchmarks/sfew_cv.py \\
        --fold-run outputs/train/sfew_cv/fold0/best.ckpt ... (one per fold, in held_out order) \\
        --model control=outputs/train/sfew_cv/control/best.ckpt --model v1=qcs_ferplus \\
        --out benchmarks/results/sfew_cv/sfew_cv.json

``--cv-model NAME=RUN0,...`` adds another cross-validated model (one run per fold) to the
comparison, scored face by face the same way.

The folds are the job's own (``emotion.data.mixture.fold_numbers``): the same faces held
out here as in training. Every model is scored as shipped models are (``--cfg`` as in
``face_models.py``; mirror averaging on with ``--test-flip``), full frame.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from face_models import SHARED, difference_text, faces, load_model, paired_bootstrap, predictions, report


def out_of_fold(fold_runs: list[str], labels: tuple[str, ...], samples: list[dict],
                updates: dict | None) -> tuple[dict[str, np.ndarray], list[dict]]:
    """Predictions of every face by the run that held its fold out, in ``samples`` order,
    and each fold's own report."""
    from emotion.data.mixture import fold_numbers

    fold = fold_numbers(samples, len(fold_runs))
    true = np.empty(len(samples), dtype=object)
    predicted = np.empty(len(samples), dtype=object)
    confidence = np.zeros(len(samples))
    per_fold = []
    for held_out, run in enumerate(fold_runs):
        members = np.flatnonzero(fold == held_out)
        outcome = predictions(load_model(run, updates), labels, [samples[i] for i in members])
        true[members], predicted[members], confidence[members] = (outcome["true"], outcome["predicted"],
                                                                  outcome["confidence"])
        per_fold.append({"held_out": held_out, "run": run, **report(outcome["true"], outcome["predicted"])})
    return {"true": true.astype(str), "predicted": predicted.astype(str), "confidence": confidence}, per_fold


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fold-run", action="append", required=True,
                        help="checkpoint of the run that held fold i out, once per fold in order")
    parser.add_argument("--cv-model", action="append", default=[],
                        help="NAME=RUN0,RUN1,...: another cross-validated model, its fold runs in held_out order")
    parser.add_argument("--model", action="append", default=[], help="NAME=WEIGHTS|CHECKPOINT: never saw the source")
    parser.add_argument("--test-flip", action="store_true", help="mirror-average every model, as shipped models do")
    parser.add_argument("--data", default=str(SHARED / "sfew"), help="the cross-validated dataset (FER folder layout)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    updates = {"test_flip": True} if args.test_flip else None
    labels, samples = faces("fer", args.data, args.split)
    outcomes = {}
    outcomes["cv"], per_fold = out_of_fold(args.fold_run, labels, samples, updates)
    for name, value in (spec.split("=", 1) for spec in args.cv_model):
        outcomes[name], _ = out_of_fold(value.split(","), labels, samples, updates)
    for name, value in (spec.split("=", 1) for spec in args.model):
        outcomes[name] = predictions(load_model(value, updates), labels, samples)
    results: dict = {"machine": {"cpus": os.cpu_count(), "torch": torch.__version__, "threads": args.threads},
                     "data": args.data, "split": args.split, "folds": len(args.fold_run), "test_flip": args.test_flip,
                     "per_fold": per_fold, "models": {}, "pairs": {}}
    for name, outcome in outcomes.items():
        results["models"][name] = report(outcome["true"], outcome["predicted"], outcome["confidence"])
        print(f"{name:<12} n={len(outcome['true'])} accuracy {results['models'][name]['accuracy']:.4f}  "
              f"mean recall {results['models'][name]['mean_class_accuracy']:.4f}", flush=True)
    cv = outcomes["cv"]
    for name, outcome in outcomes.items():
        if name == "cv":
            continue
        assert np.array_equal(cv["true"], outcome["true"])  # the same faces, in the same order
        pair = paired_bootstrap(cv["true"] == cv["predicted"], outcome["true"] == outcome["predicted"])
        results["pairs"][f"cv-{name}"] = pair
        print(f"cv - {name}: {difference_text(pair)}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
