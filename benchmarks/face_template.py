"""Measure ``emotion.crops.FACE_TEMPLATE``: where RetinaFace's five landmarks sit in the
unaligned head crop (the face box made square and expanded by ``emotion.crops.TEMPLATE_EXPAND``;
``face_template`` rescales it to any other margin).

    python benchmarks/face_template.py --images ../shared/data/expw/val

Runs the packaged RetinaFace on every image under the folder (one face crop each: the
most confident face is used), places each landmark in its head crop as a fraction of the
side, and prints the per-point median, made left-right symmetric (the eyes and the mouth
corners mirrored onto each other), with the count and the spread (interquartile range).
"""

from __future__ import annotations

import argparse
import glob
import json
import os

import numpy as np
import yaml

from emotion.crops import TEMPLATE_EXPAND, square_box
from emotion.images import decode_image
from emotion.models.loading import build_detector_from_config
from emotion.settings import RetinaFaceSettings

CONFIG = os.path.join(os.path.dirname(__file__), "..", "jobs", "configs", "detector", "retinaface.yaml")


def landmark_fractions(detector, paths: list[str], head_expand: float) -> np.ndarray:
    """[m, 5, 2]: each found face's landmarks in its head crop, as fractions of the side."""
    out = []
    for start in range(0, len(paths), 32):
        images = [decode_image(open(p, "rb").read()).pixels for p in paths[start:start + 32]]
        for found in detector.detect(images):
            if len(found["scores"]) == 0:
                continue
            box = square_box(found["boxes"][:1], head_expand)[0]
            side = box[2] - box[0]
            out.append((found["landmarks"][0] - box[:2]) / side)
    return np.asarray(out, dtype=np.float64)


def symmetric_median(points: np.ndarray) -> np.ndarray:
    """[5, 2] median of [m, 5, 2], averaged with its mirror image (x -> 1 - x, left and
    right points swapped)."""
    median = np.median(points, axis=0)
    mirrored = median[[1, 0, 2, 4, 3]].copy()
    mirrored[:, 0] = 1.0 - mirrored[:, 0]
    return (median + mirrored) / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", required=True, help="folder of face images (searched recursively)")
    args = parser.parse_args()
    with open(CONFIG) as handle:
        cfg = yaml.safe_load(handle)
    paths = sorted(p for p in glob.glob(os.path.join(args.images, "**", "*"), recursive=True)
                   if p.lower().endswith((".jpg", ".jpeg", ".png")))
    detector = build_detector_from_config(RetinaFaceSettings.model_validate({**cfg, "device": "cpu"}))
    points = landmark_fractions(detector, paths, TEMPLATE_EXPAND)
    template = symmetric_median(points)
    spread = np.percentile(points, 75, axis=0) - np.percentile(points, 25, axis=0)
    print(json.dumps({"images": len(paths), "faces": len(points), "template": np.round(template, 4).tolist(),
                      "iqr": np.round(spread, 4).tolist()}))


if __name__ == "__main__":
    main()
