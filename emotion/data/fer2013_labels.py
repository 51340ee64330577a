"""FER2013's original labels for FER+ faces: the second label set of the same images.

FER+ ships FER2013's pixels as ``fer<row>.png`` with 10 new votes, but not FER2013's own
label; FER2013's class-folder copy (``<fer2013_root>/<split>/<class>/*.jpg``) has the
labels under other file names, and its JPEGs are
histogram-equalised renders of the same faces (``docs/training.md``). Equalising keeps
the order of a face's grey levels, so the two copies of one face are matched by the
correlation of their pixel ranks (Spearman's rho; about 0.998 for true pairs, under 0.9
for distinct faces).

``fer2013_copies(png_uris, fer2013_split_folder)`` returns
``{png file name: Fer2013Copy(label, uri)}`` for every PNG whose best match reaches
``MIN_RANK_CORRELATION``. The FER+ reader mixes the
labels into the train split's targets and can read some faces from their FER2013 copy
instead of the PNG (``read_ferplus(..., fer2013_root=, fer2013_weight=,
fer2013_image_prob=)``). The matching takes about a minute for the 28,558 training faces
on 2 cores and is cached as CSV (see ``cache_path``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
from PIL import Image

from emotion import storage
from emotion.weights import cache_root

log = logging.getLogger(__name__)

MIN_RANK_CORRELATION = 0.95  # below this a PNG has no FER2013 copy: it gets no second label
MATCH_SIDE = 48  # both releases are 48 x 48; other sizes are resized to this for matching
MATCH_VERSION = "2"  # part of the cache key: bump when the matching rule or the cache's columns change
_CHUNK = 1024  # PNG rows per similarity block (1024 x 28,709 float32 = 118 MB)


def rank_vectors(images: Sequence[np.ndarray]) -> np.ndarray:
    """[N, side*side] float32: each gray image's pixel ranks, centred and L2-normalised, so
    a dot product of two rows is the rank correlation of the two images."""
    flat = np.stack([np.asarray(img, np.float32).reshape(-1) for img in images]) if images else \
        np.zeros((0, MATCH_SIDE * MATCH_SIDE), np.float32)
    ranks = flat.argsort(axis=1, kind="stable").argsort(axis=1, kind="stable").astype(np.float32)
    ranks -= ranks.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(ranks, axis=1, keepdims=True)
    return ranks / np.maximum(norms, 1e-12)


def best_matches(queries: np.ndarray, references: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each query row, (index of the most correlated reference row, that correlation)."""
    index = np.zeros(len(queries), np.int64)
    score = np.full(len(queries), -1.0, np.float32)
    if len(references) == 0:
        return index, score
    for start in range(0, len(queries), _CHUNK):
        sim = queries[start:start + _CHUNK] @ references.T
        index[start:start + _CHUNK] = sim.argmax(axis=1)
        score[start:start + _CHUNK] = sim.max(axis=1)
    return index, score


def _gray(uri: str) -> np.ndarray:
    with Image.open(io.BytesIO(storage.read_bytes(uri))) as img:
        gray = img.convert("L")
        if gray.size != (MATCH_SIDE, MATCH_SIDE):
            gray = gray.resize((MATCH_SIDE, MATCH_SIDE), Image.BILINEAR)
        return np.asarray(gray)


def _class_folder_files(fer2013_split_folder: str) -> list[tuple[str, str]]:
    """(uri, class folder name) of every image under ``<split>/<class>/``."""
    base = fer2013_split_folder.rstrip("/")
    files = []
    for uri in storage.list_files(base, suffixes=(".jpg", ".jpeg", ".png")):
        parts = uri[len(base):].strip("/").replace("\\", "/").split("/")
        if len(parts) == 2:
            files.append((uri, parts[0]))
    if not files:
        raise FileNotFoundError(f"no FER2013 class folders (<class>/*.jpg) under {fer2013_split_folder}")
    return files


class Fer2013Copy(NamedTuple):
    """A FER+ face's copy in FER2013's class folders."""

    label: str  # FER2013's class (folder) name
    uri: str  # the class-folder JPEG


def match_fer2013_labels(png_uris: dict[str, str], fer2013_split_folder: str) -> dict[str, tuple[str, float, str]]:
    """{png file name: (FER2013 class, rank correlation, JPEG uri)} for the PNGs whose
    best match in the class folders reaches ``MIN_RANK_CORRELATION``."""
    return _match(png_uris, _class_folder_files(fer2013_split_folder))


def _match(png_uris: dict[str, str], references: list[tuple[str, str]]) -> dict[str, tuple[str, float, str]]:
    names = sorted(png_uris)
    log.info("matching %d FER+ faces to %d FER2013 class-folder images by pixel ranks",
             len(names), len(references))
    query = rank_vectors([_gray(png_uris[name]) for name in names])
    refs = rank_vectors([_gray(uri) for uri, _ in references])
    index, score = best_matches(query, refs)
    matched = {name: (references[i][1], float(s), references[i][0]) for name, i, s in zip(names, index, score)
               if s >= MIN_RANK_CORRELATION}
    log.info("%d of %d FER+ faces matched (rank correlation >= %.2f)", len(matched), len(names),
             MIN_RANK_CORRELATION)
    return matched


def cache_path(png_uris: dict[str, str], fer2013_split_folder: str) -> Path:
    """Where the matching of these PNGs against that folder is cached: keyed by both file
    listings and ``MATCH_VERSION``, under ``emotion.weights.cache_root()``."""
    return _cache_file(png_uris, _class_folder_files(fer2013_split_folder))


def _cache_file(png_uris: dict[str, str], references: list[tuple[str, str]]) -> Path:
    digest = hashlib.sha256(MATCH_VERSION.encode())
    for name in sorted(png_uris):
        digest.update(f"{name}\n".encode())
    for uri, label in references:
        digest.update(f"{label}/{uri.rsplit('/', 1)[-1]}\n".encode())
    return cache_root() / "fer2013_labels" / f"{digest.hexdigest()[:32]}.csv"


def fer2013_copies(png_uris: dict[str, str], fer2013_split_folder: str) -> dict[str, Fer2013Copy]:
    """``match_fer2013_labels``'s matches, read from the cache when it holds this matching.
    The class folders are listed once, for both the cache key and the matching."""
    references = _class_folder_files(fer2013_split_folder)
    path = _cache_file(png_uris, references)
    if path.is_file():
        with open(path, newline="") as f:
            return {row["file"]: Fer2013Copy(row["label"], row["uri"]) for row in csv.DictReader(f)}
    matched = _match(png_uris, references)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    with open(partial, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "label", "rank_correlation", "uri"])
        for name, (label, score, uri) in sorted(matched.items()):
            writer.writerow([name, label, f"{score:.4f}", uri])
    os.replace(partial, path)  # atomic: a concurrent reader never sees half a file
    return {name: Fer2013Copy(label, uri) for name, (label, _, uri) in matched.items()}
