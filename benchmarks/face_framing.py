"""Face models on looser framing: each labelled face shrunk inside its own frame, as a lab
photo scored with ``detector=full_frame`` holds a face with room around it.

Every face is cut as ``emotion eval`` cuts it (``detector=full_frame``: the image is the
face), then shrunk to ``fraction`` of the crop's side and centred on a plain backdrop of the
crop's mean border colour (the wall behind a posed face). ``fraction`` 1.0 is the face as the
dataset cropped it. Per model, set and fraction: accuracy, recall per class, and how often
the model says ``neutral``; a paired bootstrap of each fraction against 1.0, and of two
models at each fraction (``--pair A,B``: A's accuracy minus B's on the same faces).

    .venv/bin/python benchmarks/face_framing.py --model v1=qcs_ferplus --model ens=qcs_ensemble \
        --fractions 1.0,0.75,0.6 --pair ens,v1 --out benchmarks/results/face_framing/framing.json

This is a stand-in for loosely framed faces, not a measurement on them: a plain backdrop is
simpler than the hair, neck and wall of a real photo.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from functools import partial
from pathlib import Path

import numpy as np

from face_models import (SHARED, difference_text, faces, labelled_sets, load_model, paired_bootstrap,
                         predictions, report)


def framed(crops: np.ndarray, fraction: float) -> np.ndarray:
    """Crops [N, S, S, C] uint8 with each face shrunk to ``fraction`` of S and centred on
    its mean border colour."""
    import torch
    import torch.nn.functional as F

    if fraction == 1.0:
        return crops
    n, side = crops.shape[0], crops.shape[1]
    inner = max(1, int(round(side * fraction)))
    images = torch.from_numpy(crops).permute(0, 3, 1, 2).float()
    small = F.interpolate(images, size=(inner, inner), mode="bilinear", antialias=True, align_corners=False)
    border = torch.cat([images[:, :, 0, :], images[:, :, -1, :], images[:, :, :, 0], images[:, :, :, -1]], dim=2)
    canvas = border.mean(dim=2).view(n, -1, 1, 1).expand(-1, -1, side, side).clone()
    top = (side - inner) // 2
    canvas[:, :, top:top + inner, top:top + inner] = small
    return canvas.round().clamp(0, 255).byte().permute(0, 2, 3, 1).contiguous().numpy()


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, help="NAME=VALUE as in face_models.py")
    parser.add_argument("--fractions", default="1.0,0.75,0.6", help="comma-separated face sides, 1.0 first")
    parser.add_argument("--sets", default="ferplus_valid,expw_val", help="comma-separated: ferplus_valid, "
                        "fer2013_val, expw_val, sfew")
    parser.add_argument("--data", default=str(SHARED), help="folder holding ferplus/, fer2013/, expw/, sfew/")
    parser.add_argument("--pair", action="append", default=[], help="A,B: A minus B at each fraction")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    fractions = [float(f) for f in args.fractions.split(",")]
    if fractions[0] != 1.0 or not all(0.0 < f <= 1.0 for f in fractions):
        parser.error("--fractions: 1.0 first, each in (0, 1]")
    data = Path(args.data)
    known_sets = labelled_sets(data)
    models = dict(spec.split("=", 1) for spec in args.model)
    results: dict = {"machine": {"cpus": os.cpu_count(), "torch": torch.__version__, "threads": args.threads},
                     "models": models, "fractions": fractions, "datasets": {}, "pairs": {}}
    pairs = [tuple(pair.split(",")) for pair in args.pair]
    unknown = [name for pair in pairs for name in pair if name not in models]
    if unknown or any(len(pair) != 2 for pair in pairs):
        parser.error(f"--pair takes A,B of --model names; not known: {unknown}")
    correct_by: dict[tuple[str, str, float], np.ndarray] = {}
    loaded = {name: load_model(value) for name, value in models.items()}
    for dataset in args.sets.split(","):
        fmt, root, split = known_sets[dataset]
        labels, samples = faces(fmt, str(root), split)
        results["datasets"][dataset] = {}
        for name, model in loaded.items():
            rows, baseline = {}, None
            for fraction in fractions:
                started = time.perf_counter()
                outcome = predictions(model, labels, samples, transform=partial(framed, fraction=fraction))
                correct = outcome["true"] == outcome["predicted"]
                correct_by[(dataset, name, fraction)] = correct
                row = report(outcome["true"], outcome["predicted"], outcome["confidence"])
                row["says_neutral"] = round(float((outcome["predicted"] == "neutral").mean()), 4)
                row["seconds"] = round(time.perf_counter() - started, 1)
                if baseline is None:
                    baseline = correct
                else:
                    row["minus_full_face"] = paired_bootstrap(correct, baseline)
                rows[str(fraction)] = row
                print(f"{dataset:<14} {name:<8} face {fraction:.2f}: accuracy {row['accuracy']:.4f}  "
                      f"mean recall {row['mean_class_accuracy']:.4f}  says neutral {row['says_neutral']:.3f}",
                      flush=True)
            results["datasets"][dataset][name] = rows
        for a, b in pairs:
            for fraction in fractions:
                result = paired_bootstrap(correct_by[(dataset, a, fraction)], correct_by[(dataset, b, fraction)])
                results["pairs"][f"{a}-{b}@{dataset}@{fraction}"] = result
                print(f"{dataset:<14} face {fraction:.2f}: {a} - {b}: {difference_text(result)}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
