"""The real faces of ``scenes_v2``: FER+ faces by category, with train and held-out faces
kept apart.

A scene of split ``train`` takes its faces from FER+'s ``FER2013Train`` folder; scenes of
``val`` and ``test`` take theirs from ``FER2013Valid``, split once into two disjoint halves
by a hash of the file name (``held_out_half``: the first byte of SHA-256 of the name,
even -> val, odd -> test). So no training scene holds a validation or test face, no
validation scene holds a test face, and the halves do not depend on the seed.

Faces are selected with FER+'s majority protocol (``emotion.data.ferplus.read_ferplus``,
mode ``majority``: single votes dropped, the emotion holding more than half of the rest)
and their majority label is mapped onto the synthetic categories by ``FACE_CATEGORY``;
faces of the other FER+ classes (disgust, contempt) are not used.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from emotion import storage
from emotion.data.ferplus import SPLIT_FOLDERS, read_ferplus
from emotion.data.synthetic.spec import ANGER, CATEGORIES, FEAR, HAPPINESS, PEACE, SADNESS, SURPRISE
from emotion.labels import FERPLUS_CLASSES

# FER+ majority class -> synthetic category (disgust and contempt are not used).
FACE_CATEGORY: dict[str, int] = {
    "happiness": HAPPINESS,
    "sadness": SADNESS,
    "anger": ANGER,
    "fear": FEAR,
    "surprise": SURPRISE,
    "neutral": PEACE,
}
# Scene split -> the FER+ split (``read_ferplus`` name) its faces come from.
FACE_SPLIT: dict[str, str] = {"train": "train", "val": "val", "test": "val"}


def held_out_half(name: str) -> str:
    """Which held-out scene split (``val`` or ``test``) may use FER2013Valid face ``name``."""
    return "val" if hashlib.sha256(name.encode("utf-8")).digest()[0] % 2 == 0 else "test"


@dataclass(frozen=True)
class FaceRef:
    """One FER+ face: ``source`` is ``<FER+ folder>/<file name>`` (written with each person),
    ``uri`` where it is read from, ``category`` its mapped majority label."""

    source: str
    uri: str
    category: int


@dataclass
class FacePool:
    """The faces one scene split may use, by category (each tuple sorted by file name)."""

    split: str
    by_category: tuple[tuple[FaceRef, ...], ...]
    _pixels: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def pick(self, category: int, rng: np.random.Generator) -> FaceRef:
        """A face of ``category`` drawn uniformly with ``rng``."""
        faces = self.by_category[category]
        return faces[int(rng.integers(len(faces)))]

    def pixels(self, face: FaceRef) -> np.ndarray:
        """The face as gray uint8 [h, w] (read once, then cached)."""
        if face.uri not in self._pixels:
            with Image.open(io.BytesIO(storage.read_bytes(face.uri))) as image:
                self._pixels[face.uri] = np.asarray(image.convert("L"), dtype=np.uint8)
        return self._pixels[face.uri]

    def sources(self) -> set[str]:
        return {face.source for faces in self.by_category for face in faces}


def load_face_pool(root: str, split: str) -> FacePool:
    """The faces of FER+ under ``root`` that scenes of ``split`` (train, val, test) may use.

    A missing folder is a FileNotFoundError and a category without any face a ValueError,
    both naming ``faces=`` (the config key of the FER+ root)."""
    if split not in FACE_SPLIT:
        raise ValueError(f"unknown scenes_v2 split {split!r}; expected one of {list(FACE_SPLIT)}")
    ferplus_split = FACE_SPLIT[split]
    folder = SPLIT_FOLDERS[ferplus_split]
    try:
        data = read_ferplus(str(root), mode="majority", splits=[ferplus_split])
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"faces={root}: not a FER+ root with {folder}/{'label.csv'} ({exc})") from None
    by_category: list[list[FaceRef]] = [[] for _ in CATEGORIES]
    for sample in data.splits[ferplus_split]:
        category = FACE_CATEGORY.get(FERPLUS_CLASSES[int(sample["labels"][0].argmax())])
        name = str(sample["image_uri"]).replace("\\", "/").rsplit("/", 1)[-1]
        if category is None or (split != "train" and held_out_half(name) != split):
            continue
        by_category[category].append(FaceRef(f"{folder}/{name}", str(sample["image_uri"]), category))
    empty = [CATEGORIES[c] for c, faces in enumerate(by_category) if not faces]
    if empty:
        raise ValueError(f"faces={root}: {folder} has no majority-labelled face for {empty} (split {split})")
    return FacePool(split, tuple(tuple(sorted(faces, key=lambda f: f.source)) for faces in by_category))
