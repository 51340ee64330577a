"""Writing a ``scenes_v2`` data set in EMOTIC format (``generate_scenes_v2``) and building
it from a config (``build_scenes_v2``: ``emotion data scenes_v2``).

JPEGs go under ``<root>/scenes_v2/images/`` and the labels to ``<root>/Annotations.mat``
(label set ``synthetic``, the 6 categories), which ``emotion.data.emotic.read_emotic``
reads (data format ``synthetic``). Each person has ``body_bbox`` and ``head_bbox`` (the
face box), one category, VAD, and the fields of ``agreement.PERSON_FIELDS``:
``cue_face`` / ``cue_body`` / ``cue_context`` (category names, ``none`` when absent),
``cue_body_state`` / ``cue_context_state`` (clear, weak, absent), ``relation``,
``face_source`` (``FER2013Train/fer0001234.png``: which FER+ face was pasted) and
``visible``. Readers ignore them; tests and ``agreement.read_people`` use them.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

from PIL import Image

from emotion.data.emotic import EmoticImage, EmoticPerson, write_emotic_annotations
from emotion.data.synthetic.scenes_v2.agreement import ABSENT, expected_level_agreement, level_agreement
from emotion.data.synthetic.scenes_v2.drawing import RenderedSceneV2, iter_scenes_v2
from emotion.data.synthetic.scenes_v2.faces import load_face_pool
from emotion.data.synthetic.scenes_v2.params import ScenesV2Params, params_from_config, params_to_config
from emotion.data.synthetic.scenes_v2.spec import SceneV2
from emotion.data.synthetic.spec import CATEGORIES
from emotion.settings import ScenesV2Settings

IMAGE_FOLDER = "scenes_v2/images"
DATABASE = "scenes_v2"


def person_fields(spec: SceneV2) -> list[dict[str, Any]]:
    """The label and cue fields of each person of ``spec`` (as ``agreement.read_people``)."""
    context = ABSENT if spec.context is None else CATEGORIES[spec.context]
    return [
        {
            "label": CATEGORIES[p.label],
            "cue_face": CATEGORIES[p.face],
            "cue_body": ABSENT if p.body is None else CATEGORIES[p.body],
            "cue_context": context,
            "cue_body_state": p.body_state,
            "cue_context_state": spec.context_state,
            "relation": p.relation,
            "face_source": p.face_source,
            "visible": float(p.visible),
        }
        for p in spec.people
    ]


def _emotic_image(scene: RenderedSceneV2, filename: str) -> EmoticImage:
    people = []
    for i, (person, fields) in enumerate(zip(scene.spec.people, person_fields(scene.spec))):
        extra = {k: v for k, v in fields.items() if k != "label"}
        people.append(
            EmoticPerson(
                body_bbox=scene.body_boxes[i].tolist(), categories=[[fields["label"]]], continuous=[person.vad],
                head_bbox=scene.face_boxes[i].tolist(), gender="Unknown", age="Adult", extra=extra,
            )  # fmt: skip
        )
    return EmoticImage(filename, IMAGE_FOLDER, scene.spec.width, scene.spec.height, people, database=DATABASE)


def generate_scenes_v2(
    root: str | os.PathLike,
    faces: str | os.PathLike,
    *,
    n_train: int,
    n_val: int,
    n_test: int,
    seed: int,
    image_size: tuple[int, int],
    params: ScenesV2Params,
    jpeg_quality: int,
) -> dict[str, Any]:
    """Write a ``scenes_v2`` data set to the local folder ``root`` with faces from the FER+
    root ``faces``. Returns a summary: per split images, people, people per image, cue
    states, distinct faces and the measured level agreement; the expected agreement; the
    parameters; the annotation path."""
    root = Path(root)
    (root / IMAGE_FOLDER).mkdir(parents=True, exist_ok=True)
    image_size = (int(image_size[0]), int(image_size[1]))
    splits: dict[str, list[EmoticImage]] = {}
    summary: dict[str, Any] = {"root": str(root), "faces": str(faces), "labels": list(CATEGORIES), "splits": {},
                               "expected_agreement": expected_level_agreement(params), "params": params_to_config(params)}
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        images, rows, sizes = [], [], Counter()
        if n > 0:
            pool = load_face_pool(str(faces), split)
            for index, scene in enumerate(iter_scenes_v2(n, pool, seed, split, image_size, params)):
                filename = f"{split}_{index:06d}.jpg"
                Image.fromarray(scene.pixels).save(root / IMAGE_FOLDER / filename, quality=jpeg_quality)
                images.append(_emotic_image(scene, filename))
                rows.extend(person_fields(scene.spec))
                sizes[len(scene.spec.people)] += 1
        splits[split] = images
        summary["splits"][split] = _split_summary(n, rows, sizes)
    annotations = root / "Annotations.mat"
    write_emotic_annotations(annotations, splits, categories=CATEGORIES, label_set="synthetic")
    summary["annotations"] = str(annotations)
    return summary


def _split_summary(n: int, rows: list[dict[str, Any]], sizes: Counter) -> dict[str, Any]:
    people = len(rows)
    share = lambda key: {k: v / people for k, v in sorted(Counter(r[key] for r in rows).items())} if people else {}  # noqa: E731
    return {
        "images": n,
        "people": people,
        "people_per_image": {k: sizes[k] for k in sorted(sizes)},
        "body_states": share("cue_body_state"),
        "context_states": share("cue_context_state"),
        "partly_hidden": sum(r["visible"] < 0.9 for r in rows) / people if people else 0.0,
        "distinct_faces": len({r["face_source"] for r in rows}),
        "agreement": level_agreement(rows) if people else {},
    }


def build_scenes_v2(settings: ScenesV2Settings) -> dict[str, Any]:
    """Generate what ``emotion data scenes_v2``'s settings describe (the ``ScenesV2Params``
    keys through ``params_from_config``)."""
    if not settings.faces:
        raise ValueError("scenes_v2 needs faces=PATH: the FER+ root holding FER2013Train/ and FER2013Valid/ "
                         "(e.g. faces=/data/ferplus)")
    return generate_scenes_v2(
        settings.root, settings.faces, n_train=settings.n_train, n_val=settings.n_val, n_test=settings.n_test,
        seed=settings.seed, image_size=(settings.image_size, settings.image_size),
        params=params_from_config(settings.model_dump()), jpeg_quality=settings.jpeg_quality,
    )  # fmt: skip
