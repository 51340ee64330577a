"""Does the CocoER workspace help? Score checkpoints on a split with it on and off.

For each checkpoint: test-split mAP with the workspace as trained, and the same weights
with it switched off (``model.use_workspace = False``: the fusion reads the unrefined level
logits), top-1 on all people and on people of conflict images, and a paired bootstrap
(over people) of the on − off mAP difference. Checkpoints trained with and without the
workspace are compared the same way (``--compare A B``: A − B, paired over people).

    python benchmarks/workspace_ablation.py --data /tmp/synthetic_emotic \\
        --checkpoint /tmp/ws_on/best.ckpt --checkpoint /tmp/ws_off/best.ckpt --compare 0 1

Crops are cut like ``emotion eval`` does for the synthetic data: ground-truth head box
squared and expanded ``--head-expand`` (1.25), ground-truth body box, whole image.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import scipy.io
import torch

from emotion.models.loading import load_model_from_checkpoint
from emotion.data.emotic import read_emotic
from emotion.metrics import mean_average_precision
from emotion.training.rows import build_crop_spec, person_rows


def conflict_mask(root: str, split: str) -> np.ndarray:
    """Per person (in reading order): do the person's face, body and context cues disagree?"""
    mat = scipy.io.loadmat(str(Path(root) / "Annotations.mat"), squeeze_me=True, struct_as_record=False)
    flags = []
    for entry in np.atleast_1d(mat[split]):
        for person in np.atleast_1d(entry.person):
            cues = {str(getattr(person, f"cue_{level}")) for level in ("face", "body", "context")}
            flags.append(len(cues) > 1)
    return np.asarray(flags, dtype=bool)


def predict_scores(model, rows: dict, batch: int = 128) -> np.ndarray:
    crops = {m: rows[f"crop_{m}"] for m in model.input_levels}
    n = len(rows["labels"])
    parts = [model.predict({m: c[i:i + batch] for m, c in crops.items()})["scores"] for i in range(0, n, batch)]
    return np.concatenate(parts)


def bootstrap_diff(labels: np.ndarray, a: np.ndarray, b: np.ndarray, reps: int, seed: int = 0) -> tuple[float, float, float]:
    """mAP(a) − mAP(b) and its 95 % interval, resampling people (paired)."""
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(reps):
        idx = rng.integers(0, len(labels), len(labels))
        diffs.append(mean_average_precision(labels[idx], a[idx])[0] - mean_average_precision(labels[idx], b[idx])[0])
    point = mean_average_precision(labels, a)[0] - mean_average_precision(labels, b)[0]
    return point, float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="synthetic EMOTIC-format root (Annotations.mat)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--checkpoint", action="append", required=True)
    parser.add_argument("--compare", nargs=2, type=int, action="append", default=[],
                        help="indices of two --checkpoint's to compare (A − B, each as trained)")
    parser.add_argument("--head-expand", type=float, default=1.25)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(1)

    samples = read_emotic(args.data, splits=[args.split]).splits[args.split]
    conflict = conflict_mask(args.data, args.split)
    results, as_trained = [], []
    labels = None
    for path in args.checkpoint:
        model = load_model_from_checkpoint(path)
        rows = person_rows(samples, build_crop_spec(model, head_expand=args.head_expand, max_side=960),
                           num_labels=len(model.labels), multi_label=bool(model.multi_label))
        labels = rows["labels"]
        if len(conflict) != len(labels):
            raise SystemExit(f"{len(conflict)} people in the annotations but {len(labels)} rows")
        trained_with = bool(model.use_workspace)
        scores = {}
        for setting in (True, False):
            model.use_workspace = setting
            scores[setting] = predict_scores(model, rows)
        truth = labels.argmax(1)
        record = {"checkpoint": path, "trained_with_workspace": trained_with,
                  "vocab_level": getattr(model, "vocab_level", "context"), "people": int(len(labels)),
                  "conflict_people": int(conflict.sum())}
        for setting, name in ((True, "workspace_on"), (False, "workspace_off")):
            s = scores[setting]
            record[name] = {"mAP": mean_average_precision(labels, s)[0],
                            "top1": float((s.argmax(1) == truth).mean()),
                            "top1_conflict": float((s.argmax(1) == truth)[conflict].mean())}
        point, low, high = bootstrap_diff(labels, scores[True], scores[False], args.bootstrap)
        record["on_minus_off"] = {"mAP": point, "ci95": [low, high]}
        results.append(record)
        as_trained.append(scores[trained_with])
        print(json.dumps(record))
    comparisons = []
    for a, b in args.compare:
        point, low, high = bootstrap_diff(labels, as_trained[a], as_trained[b], args.bootstrap)
        comparisons.append({"a": args.checkpoint[a], "b": args.checkpoint[b], "mAP_a_minus_b": point, "ci95": [low, high]})
        print(json.dumps(comparisons[-1]))
    if args.out:
        Path(args.out).write_text(json.dumps({"results": results, "comparisons": comparisons}, indent=2))


if __name__ == "__main__":
    main()
