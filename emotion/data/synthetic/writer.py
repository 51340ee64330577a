"""Writing a synthetic data set in EMOTIC format: ``generate_synthetic_emotic`` (JPEGs under
``<root>/synthetic/images/`` and ``<root>/Annotations.mat``, with the cue fields) and
``build_synthetic`` (the same from a config: ``emotion data synth``).

``emotion.data.emotic.read_emotic`` reads what it writes; it is the reader of the
``synthetic`` format of ``emotion.data.read_dataset``.
"""

from __future__ import annotations

import os
from pathlib import Path
from PIL import Image

from emotion.data.emotic import EmoticImage, EmoticPerson, write_emotic_annotations
from emotion.data.synthetic.drawing import RenderedScene, iter_scenes
from emotion.data.synthetic.spec import CATEGORIES
from emotion.settings import SynthSettings

IMAGE_FOLDER = "synthetic/images"


def generate_synthetic_emotic(
    root: str | os.PathLike,
    *,
    n_train: int,
    n_val: int,
    n_test: int,
    conflict_rate: float,
    seed: int,
    image_size: tuple[int, int],
    max_people: int,
    jpeg_quality: int,
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


def build_synthetic(settings: SynthSettings) -> dict[str, object]:
    """Generate what ``emotion data synth``'s settings describe."""
    return generate_synthetic_emotic(
        settings.root,
        n_train=settings.n_train,
        n_val=settings.n_val,
        n_test=settings.n_test,
        conflict_rate=settings.conflict_rate,
        seed=settings.seed,
        image_size=(settings.image_size, settings.image_size),
        max_people=settings.max_people,
        jpeg_quality=settings.jpeg_quality,
    )
