"""``detector=full_frame`` with and without ``find_face``, through the real predictor, on
labelled faces framed as the datasets crop them and shrunk inside their frame.

Each face image is shrunk to ``fraction`` of its side and centred on a plain backdrop of
its mean border colour (a stand-in for the room around a face in a portrait or lab photo,
as ``face_framing.py`` does to crops), written as PNG, and read, decoded, found and scored
by ``emotion.predictor`` as ``emotion tag``/``eval``/``serve`` do: once with
``detector.find_face=false`` (the whole image is the face) and once with ``true`` (the face
RetinaFace finds is cut in FER2013's framing). Per set and fraction: accuracy, recall per
class and its mean, the share called neutral, faces/s, and the paired bootstrap of
find_face minus whole image.

    .venv/bin/python benchmarks/face_finding.py --out benchmarks/results/face_finding/finding.json

Fractions below 1.0 run on ``--framed-sets`` only (FER2013Valid and ExpW val by default).
``--mode NAME="OVERRIDES"`` (twice or more) compares other predictor settings instead, the
last minus the first, e.g. RetinaFace's head margin::

    .venv/bin/python benchmarks/face_finding.py --mode m125="detector=retinaface detector.head_expand=1.25" \
        --mode m110="detector=retinaface detector.head_expand=1.1" --out ...

An image where the detector finds several faces is scored by its most confident one; an
image where it finds none counts as wrong (predicted ``none``).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image

from face_models import SHARED, difference_text, faces, labelled_sets, paired_bootstrap, report, top_names

MODES = {"whole_image": "detector=full_frame detector.find_face=false",
         "find_face": "detector=full_frame detector.find_face=true"}


def framed_png(data: bytes, fraction: float) -> bytes:
    """The image in ``data`` shrunk to ``fraction`` of its sides, centred on its mean border
    colour, as PNG (lossless: the framing is the only change)."""
    image = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    if fraction != 1.0:
        height, width = image.shape[:2]
        border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]]).mean(axis=0)
        canvas = np.empty_like(image)
        canvas[:] = border.round().astype(np.uint8)
        inner_h, inner_w = max(1, round(height * fraction)), max(1, round(width * fraction))
        small = np.asarray(Image.fromarray(image).resize((inner_w, inner_h), Image.BILINEAR))
        top, left = (height - inner_h) // 2, (width - inner_w) // 2
        canvas[top:top + inner_h, left:left + inner_w] = small
        image = canvas
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


def build(model: str, mode: str, overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from emotion.predictor import build_predictor

    config_dir = str(Path(__file__).resolve().parents[1] / "jobs" / "configs")
    with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
        cfg = compose(config_name="tag", overrides=[f"model={model}", "model.device=cpu", *mode.split(), *overrides])
    cfg = OmegaConf.to_container(cfg, resolve=True)
    for detector in (cfg["detector"], cfg["detector"].get("finder")):
        if detector is not None and "device" in detector:
            detector["device"] = "cpu"
    return build_predictor(cfg)


def predicted(predictor, payloads: list[bytes], batch: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Each image's predicted class name and its score, as ``emotion eval`` reads them (its
    most confident face), or ``none`` and 0 where no face was found."""
    from emotion.evaluation import first_person_scores_of

    scores = []
    for start in range(0, len(payloads), batch):
        chunk = payloads[start:start + batch]
        scores.append(first_person_scores_of(predictor, [f"face{start + i}.png" for i in range(len(chunk))], chunk))
    return top_names(np.concatenate(scores), predictor.spec.labels)


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="face_ensemble", help="the model config group option")
    parser.add_argument("--sets", default="ferplus_valid,fer2013_val,expw_val,sfew")
    parser.add_argument("--framed-sets", default="ferplus_valid,expw_val")
    parser.add_argument("--fractions", default="0.8,0.6", help="face sides below 1.0, on --framed-sets")
    parser.add_argument("--data", default=str(SHARED), help="folder holding ferplus/, fer2013/, expw/, sfew/")
    parser.add_argument("--mode", action="append", default=[], help='NAME="OVERRIDES": settings to compare '
                        "(the last minus the first); default: full_frame without and with find_face")
    parser.add_argument("--override", action="append", default=[], help="a tag config override for every mode")
    parser.add_argument("--limit", type=int, default=None, help="the first N faces of each set (a quick look)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from emotion import storage
    from emotion.labels import canonical_name, remap

    modes = dict(spec.split("=", 1) for spec in args.mode) if args.mode else MODES
    if len(modes) < 2:
        parser.error("--mode: give two or more")
    first, last = list(modes)[0], list(modes)[-1]
    predictors = {mode: build(args.model, value, args.override) for mode, value in modes.items()}
    model_labels = list(predictors[last].spec.labels)
    known_sets = labelled_sets(Path(args.data))
    results: dict = {"machine": {"cpus": os.cpu_count(), "torch": torch.__version__, "threads": args.threads},
                     "model": predictors[last].spec.model_id, "modes": modes, "datasets": {}}
    for dataset in args.sets.split(","):
        fmt, root, split = known_sets[dataset]
        data_labels, samples = faces(fmt, str(root), split)
        known = remap(list(data_labels), model_labels) >= 0
        samples = [s for s in samples if known[int(np.argmax(s["labels"][0]))]][:args.limit]
        true = np.asarray([canonical_name(data_labels[int(np.argmax(s["labels"][0]))]) for s in samples])
        originals = [storage.read_bytes(s["image_uri"]) for s in samples]
        fractions = [1.0] + ([float(f) for f in args.fractions.split(",")] if dataset in args.framed_sets.split(",")
                             else [])
        results["datasets"][dataset] = {}
        for fraction in fractions:
            payloads = [framed_png(data, fraction) for data in originals]
            rows, correct = {}, {}
            for mode, predictor in predictors.items():
                started = time.perf_counter()
                names, confidence = predicted(predictor, payloads)
                seconds = time.perf_counter() - started
                correct[mode] = names == true
                row = report(true, names, confidence)
                row["says_neutral"] = round(float((names == "neutral").mean()), 4)
                row["faces_per_s"] = round(len(payloads) / seconds, 1)
                rows[mode] = row
                print(f"{dataset:<14} face {fraction:.2f} {mode:<12} accuracy {row['accuracy']:.4f}  mean recall "
                      f"{row['mean_class_accuracy']:.4f}  says neutral {row['says_neutral']:.3f}  "
                      f"{row['faces_per_s']} faces/s", flush=True)
            rows[f"{last}_minus_{first}"] = paired_bootstrap(correct[last], correct[first])
            print(f"{dataset:<14} face {fraction:.2f} {last} - {first}: "
                  f"{difference_text(rows[f'{last}_minus_{first}'])}", flush=True)
            results["datasets"][dataset][str(fraction)] = rows
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
