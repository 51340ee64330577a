"""Writing a synthetic data set in EMOTIC format: ``generate_synthetic_emotic`` (JPEGs under
``<root>/synthetic/images/`` and ``<root>/Annotations.mat``, with the cue fields) and
``build_synthetic`` (the same from a config: ``emotion data synth``).

``emotion.data.emotic.read_emotic`` reads what it writes; it is the reader of the
``synthetic`` format of ``emotion.data.read_dataset``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from PIL import Image

from emotion.data.emotic import EmoticImage, EmoticPerson, write_emotic_annotations
from emotion.data.synthetic.drawing import RenderedScene, iter_scenes
from emotion.data.synthetic.spec import CATEGORIES

IMAGE_FOLDER = "synthetic/images"


def generate_synthetic_emotic(
    root: str | os.PathLike,
    n_train: int,
    n_val: int,
    n_test: int,
    conflict_rate: float = 0.3,
    seed: int = 0,
    image_size: tuple[int, int] = (160, 160),
    max_people: int = 3,
    jpeg_quality: int = 92,
) -> dict[str, object]:
    """Write a synthetic EMOTIC-format dataset to the local folder ``root``.

    Returns a summary: per split the number of images and people and the measured
    fraction of conflict images, plus the label list and the annotation path.
    """
    root = Path(root)
    (root / IMAGE_FOLDER).mkdir(parents=True, exist_ok=True)
    image_size = (int(image_size[0]), int(image_size[1]))
    splits: dict[str, list[EmoticImage]] = {}
    summary: dict[str, object] = {"root": str(root), "labels": list(CATEGORIES), "splits": {}}
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        images, people, conflicts = [], 0, 0
        for index, scene in enumerate(iter_scenes(n, seed, split, conflict_rate, image_size, max_people)):
            filename = f"{split}_{index:06d}.jpg"
            Image.fromarray(scene.pixels).save(root / IMAGE_FOLDER / filename, quality=jpeg_quality)
            images.append(_emotic_image(scene, filename, split))
            people += len(scene.spec.people)
            conflicts += int(scene.spec.conflict)
        splits[split] = images
        summary["splits"][split] = {"images": n, "people": people, "conflict_fraction": conflicts / n if n else 0.0}
    annotations = root / "Annotations.mat"
    write_emotic_annotations(annotations, splits, categories=CATEGORIES, label_set="synthetic")
    summary["annotations"] = str(annotations)
    return summary


def _emotic_image(scene: RenderedScene, filename: str, split: str) -> EmoticImage:
    spec = scene.spec
    people = []
    for i, person in enumerate(spec.people):
        name = CATEGORIES[person.label]
        people.append(
            EmoticPerson(
                body_bbox=scene.body_boxes[i].tolist(),
                categories=[[name]],
                continuous=[person.vad],
                head_bbox=scene.face_boxes[i].tolist(),
                gender="Unknown",
                age="Adult",
                extra={
                    "cue_face": CATEGORIES[person.face],
                    "cue_body": CATEGORIES[person.body],
                    "cue_context": CATEGORIES[spec.context],
                },
            )
        )
    return EmoticImage(filename, IMAGE_FOLDER, spec.width, spec.height, people, database="synthetic")


def build_synthetic(cfg: Mapping) -> dict[str, object]:
    """Generate from a config: root, n_train, n_val, n_test, conflict_rate, seed, image_size."""
    size = cfg.get("image_size", (160, 160))
    if isinstance(size, int):
        size = (size, size)
    return generate_synthetic_emotic(
        cfg["root"],
        int(cfg.get("n_train", 1000)),
        int(cfg.get("n_val", 200)),
        int(cfg.get("n_test", 200)),
        conflict_rate=float(cfg.get("conflict_rate", 0.3)),
        seed=int(cfg.get("seed", 0)),
        image_size=(int(size[0]), int(size[1])),
        max_people=int(cfg.get("max_people", 3)),
    )
