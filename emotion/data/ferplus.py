"""FER+ (Barsoum et al., ICMI 2016): FER2013's faces relabelled by 10 annotators each,
in Microsoft's release layout.

Layout: ``<root>/FER2013Train/``, ``<root>/FER2013Valid/`` and ``<root>/FER2013Test/``
(splits ``train``, ``val``, ``test``), each holding 48 x 48 gray PNGs ``fer<row>.png`` and
a ``label.csv`` without header whose rows are::

    fer0000000.png,"(0, 0, 48, 48)",4,0,0,1,3,2,0,0,0,0

the file name, the face box ``(x, y, w, h)``, then 10 vote counts: the 8 emotions of
``FERPLUS_CLASSES`` (neutral, happiness, surprise, sadness, anger, disgust, fear,
contempt), unknown, and NF (not a face). Each image is one face: ``face_boxes`` is the
label.csv box as x1, y1, x2, y2 (the whole image in the release), the body box is unknown
(NaN), and the image size comes from that box when it starts at the origin (no PNG header
is read), else from the file's header. Rows whose PNG is absent are left out (one warning
per split); PNGs without a row are ignored.

Targets (float32 [1, 8], summing to 1), as Microsoft's reference code (``FERPlus``,
``_process_data``) builds them. First, single votes are dropped (a count of 1 becomes 0:
outlier removal); S is the sum of the remaining 10 counts. The **train** split follows
``mode``, one of the paper's four training modes:

=============== ========================================= ===================================
mode            target                                    loss it is meant for (training)
=============== ========================================= ===================================
majority        one-hot at the class holding more than    cross-entropy on that class
                half of S; else the image is left out
probability     the largest counts taken in turn (ties    each step, a class drawn from the
                together) while their sum < 0.75 S, fewer target; cross-entropy on it
                than 3 taken and no unknown/NF taken (an
                unknown/NF tie after other emotions is
                dropped); left out if the taken sum is
                <= 0.5 S or more than 3 were taken;
                target = taken counts normalised
crossentropy    as ``probability``                        cross-entropy against the
                                                          distribution (soft targets)
multi_target    every count >= 0.3 S, normalised; left    -log of the summed predicted
                out if their sum is <= 0.5 S              probability of the target's
                                                          non-zero classes
=============== ========================================= ===================================

In every mode an image whose processed 10-vector peaks at unknown or NF is left out;
otherwise those two entries are dropped and the 8 emotions renormalised.

The **val** and **test** splits always follow the paper's test protocol, whatever
``mode`` is: single votes dropped, the label is the emotion holding more than half of the
remaining votes (one-hot); images with no such majority, or whose majority is unknown or
NF, are left out. So ``emotion eval`` and validation during training always measure the
same thing, and a ``majority`` train split is labelled by that protocol too.

How many images each rule left out is logged (one info line per split) and returned by
``ferplus_counts``: ``kept``, ``missing_image``, ``no_majority``, ``spread_votes`` (the
kept votes are not more than half), ``too_many_emotions``, ``unknown_or_not_face``, and
``unlisted_images`` (PNGs without a label.csv row, ignored).
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import math
from collections import Counter
from typing import Any, NamedTuple, Sequence

import numpy as np

from emotion import storage
from emotion.data.fer2013_labels import Fer2013Copy, fer2013_copies
from emotion.data.records import SampleSet, make_sample, probe_image_size
from emotion.labels import FERPLUS_CLASSES, canonical_name

log = logging.getLogger(__name__)

LABEL_SET = "ferplus"
MODES: tuple[str, ...] = ("majority", "probability", "crossentropy", "multi_target")
# Split name -> release folder, in reading order.
SPLIT_FOLDERS: dict[str, str] = {"train": "FER2013Train", "val": "FER2013Valid", "test": "FER2013Test"}
LABEL_FILE = "label.csv"
NUM_VOTES = 10  # the 8 emotions, unknown, NF
UNKNOWN = 8  # vote columns from here on are unknown (8) and NF (9): not classes
# The order reasons are reported in (keys of ``ferplus_counts``).
COUNT_KEYS: tuple[str, ...] = ("kept", "missing_image", "no_majority", "spread_votes", "too_many_emotions",
                               "unknown_or_not_face", "unlisted_images")


class LabelRow(NamedTuple):
    line: int
    name: str
    box: tuple[float, float, float, float]  # x1, y1, x2, y2
    votes: tuple[float, ...]  # 10 counts


# ---------------------------------------------------------------- targets


def ferplus_target(votes: Sequence[float], mode: str = "majority") -> tuple[np.ndarray | None, str]:
    """(float32 [8] target, "kept") for one image's 10 vote counts, or (None, reason) when
    ``mode``'s rules leave the image out (reasons as in ``ferplus_counts``)."""
    if mode not in MODES:
        raise ValueError(f"unknown FER+ mode {mode!r}; expected one of {list(MODES)}")
    raw = np.asarray(votes, dtype=np.float64).reshape(-1)
    if raw.shape != (NUM_VOTES,):
        raise ValueError(f"FER+ needs {NUM_VOTES} vote counts, got {raw.size}")
    raw = np.where(raw < 1.0 + 1e-9, 0.0, raw)  # a single vote is an outlier
    total = float(raw.sum())
    if mode == "majority":
        peak = int(raw.argmax())
        if not raw[peak] > 0.5 * total:
            return None, "no_majority"
        target = np.zeros(NUM_VOTES)
        target[peak] = 1.0
    elif mode == "multi_target":
        target = np.where(raw >= 0.3 * total, raw, 0.0)
        if not target.sum() > 0.5 * total:
            return None, "spread_votes"
    else:  # probability, crossentropy
        target, count = _take_peaks(raw, total)
        if count > 3:
            return None, "too_many_emotions"
        if not target.sum() > 0.5 * total:
            return None, "spread_votes"
    if int(target.argmax()) >= UNKNOWN:
        return None, "unknown_or_not_face"
    emotions = target[:UNKNOWN]
    return (emotions / emotions.sum()).astype(np.float32), "kept"


def _take_peaks(raw: np.ndarray, total: float) -> tuple[np.ndarray, int]:
    """The probability/crossentropy rule: (taken counts, how many taken); a line-by-line
    port of the reference loop, ties and the unknown/NF stop included."""
    raw = raw.copy()
    taken = np.zeros(NUM_VOTES)
    taken_sum, count, valid = 0.0, 0, True
    while taken_sum < 0.75 * total and count < 3 and valid:
        peak = raw.max()
        for i in range(NUM_VOTES):
            if raw[i] != peak:
                continue
            taken[i], raw[i] = peak, 0.0
            taken_sum += peak
            count += 1
            if i >= UNKNOWN:  # unknown or NF among the peaks: stop here
                valid = False
                if taken.sum() > peak:  # other emotions were taken before it: drop it
                    taken[i] = 0.0
                    count -= 1
                break
    return taken, count


# ---------------------------------------------------------------- label.csv


def read_label_csv(uri: str) -> list[LabelRow]:
    """The rows of a FER+ ``label.csv``; a malformed row is a ValueError naming file and line."""
    text = storage.read_bytes(uri).decode("utf-8-sig")
    rows: list[LabelRow] = []
    seen: dict[str, int] = {}
    for line, fields in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not fields or all(not f.strip() for f in fields):
            continue
        try:
            row = _parse_row(line, fields)
        except ValueError as exc:
            raise ValueError(f"{uri} line {line}: {exc}; expected 'fer<row>.png,\"(x, y, w, h)\",' "
                             f"then {NUM_VOTES} vote counts, got {','.join(fields)!r}") from None
        if row.name in seen:
            raise ValueError(f"{uri} line {line}: {row.name!r} is listed again (first on line {seen[row.name]})")
        seen[row.name] = line
        rows.append(row)
    return rows


def _parse_row(line: int, fields: list[str]) -> LabelRow:
    if len(fields) != 2 + NUM_VOTES:
        raise ValueError(f"{len(fields)} fields instead of {2 + NUM_VOTES}")
    name = fields[0].strip()
    if not name or "/" in name or "\\" in name:
        raise ValueError(f"bad file name {name!r}")
    box_text = fields[1].strip()
    if not (box_text.startswith("(") and box_text.endswith(")")):
        raise ValueError(f"bad face box {box_text!r}")
    x, y, w, h = _numbers(box_text[1:-1].split(","), 4, "face box")
    if w <= 0 or h <= 0:
        raise ValueError(f"empty face box {box_text!r}")
    votes = _numbers(fields[2:], NUM_VOTES, "vote counts")
    if min(votes) < 0:
        raise ValueError("negative vote count")
    return LabelRow(line, name, (x, y, x + w, y + h), votes)


def _numbers(texts: Sequence[str], n: int, what: str) -> tuple[float, ...]:
    if len(texts) != n:
        raise ValueError(f"{what}: {len(texts)} numbers instead of {n}")
    try:
        values = tuple(float(t) for t in texts)
    except ValueError:
        raise ValueError(f"{what}: not numbers: {[t.strip() for t in texts]}") from None
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{what}: not finite: {values}")
    return values


# ---------------------------------------------------------------- reader


def _split_names(splits: Sequence[str] | None) -> list[str]:
    if splits is None:
        return list(SPLIT_FOLDERS)
    if isinstance(splits, str):
        splits = [splits]
    unknown = [s for s in splits if s not in SPLIT_FOLDERS]
    if unknown:
        raise ValueError(f"unknown FER+ split(s) {unknown}; expected some of {list(SPLIT_FOLDERS)} "
                         f"(folders {list(SPLIT_FOLDERS.values())})")
    return list(splits)


def _list_folder(folder: str) -> dict[str, str]:
    """{file name: uri} of a split folder's direct children; empty when the folder is absent."""
    try:
        uris = storage.list_files(folder, recursive=False)
    except FileNotFoundError:
        return {}
    return {uri.replace("\\", "/").rsplit("/", 1)[-1]: uri for uri in uris}


def mix_second_label(target: np.ndarray, second_label: str | None, weight: float) -> np.ndarray:
    """``(1 - weight) * target + weight * one-hot(second_label)`` over ``FERPLUS_CLASSES``
    (FER2013's class names are matched by canonical name); ``target`` unchanged when the
    face has no second label or ``weight`` is 0."""
    if not second_label or weight <= 0:
        return target
    index = _FERPLUS_INDEX.get(canonical_name(second_label))
    if index is None:
        raise ValueError(f"FER2013 class {second_label!r} is not a FER+ class ({', '.join(FERPLUS_CLASSES)})")
    mixed = (1.0 - weight) * target
    mixed[index] += weight
    return mixed.astype(np.float32)


_FERPLUS_INDEX = {canonical_name(name): i for i, name in enumerate(FERPLUS_CLASSES)}


def reads_fer2013_copy(png_name: str, probability: float) -> bool:
    """Whether a matched train face is read from its FER2013 copy: a fixed draw per file
    name (the same faces in every run and on every worker, whatever the read order)."""
    if probability <= 0:
        return False
    draw = int.from_bytes(hashlib.sha256(f"fer2013-copy/{png_name}".encode()).digest()[:8], "big") / 2.0 ** 64
    return draw < probability


def _read_split(root: str, split: str, mode: str, files: dict[str, str],
                copies: dict[str, Fer2013Copy] | None = None, second_weight: float = 0.0,
                copy_probability: float = 0.0) -> tuple[list[dict[str, Any]], Counter]:
    folder = storage.join(root, SPLIT_FOLDERS[split])
    if LABEL_FILE not in files:
        raise FileNotFoundError(f"FER+ split folder {folder} has no {LABEL_FILE}")
    rows = read_label_csv(files[LABEL_FILE])
    split_mode = mode if split == "train" else "majority"  # val/test: the paper's test protocol
    copies = copies or {}
    counts: Counter = Counter({key: 0 for key in COUNT_KEYS})
    if copies:
        counts["fer2013_labelled"] = 0  # kept faces that also carry FER2013's label
        counts["fer2013_rendering"] = 0  # kept faces read from their FER2013 copy
    missing: list[str] = []
    samples = []
    for row in rows:
        uri = files.get(row.name)
        if uri is None:
            missing.append(row.name)
            counts["missing_image"] += 1
            continue
        target, reason = ferplus_target(row.votes, split_mode)
        counts[reason] += 1
        if target is None:
            continue
        copy = copies.get(row.name)
        if copy is not None:
            counts["fer2013_labelled"] += 1
            target = mix_second_label(target, copy.label, second_weight)
            if reads_fer2013_copy(row.name, copy_probability):
                uri = copy.uri  # the same face as FER2013's equalised JPEG: another rendering
                counts["fer2013_rendering"] += 1
        x1, y1, x2, y2 = row.box
        width, height = (int(x2), int(y2)) if x1 == 0 and y1 == 0 else probe_image_size(uri)
        samples.append(make_sample(uri, split, target[None, :], LABEL_SET, face_boxes=np.array([row.box], np.float32),
                                   width=width, height=height))
    listed = {row.name for row in rows}
    counts["unlisted_images"] = sum(1 for name in files if name.lower().endswith(".png") and name not in listed)
    if missing:
        log.warning("FER+ %s: %d image(s) listed in %s are missing and left out, e.g. %s",
                    SPLIT_FOLDERS[split], len(missing), LABEL_FILE, missing[:3])
    log.info("FER+ %s (%s, %s): %s", SPLIT_FOLDERS[split], split, split_mode,
             ", ".join(f"{key} {counts[key]}" for key in COUNT_KEYS))
    return samples, counts


def _read(root: str, mode: str, splits: Sequence[str] | None, fer2013_root: str | None = None,
          fer2013_weight: float = 0.0,
          fer2013_image_prob: float = 0.0) -> tuple[SampleSet, dict[str, dict[str, int]]]:
    if mode not in MODES:
        raise ValueError(f"unknown FER+ mode {mode!r}; expected one of {list(MODES)}")
    fer2013_weight = float(fer2013_weight or 0.0)
    fer2013_image_prob = float(fer2013_image_prob or 0.0)
    if not 0.0 <= fer2013_weight < 1.0:
        raise ValueError(f"fer2013_weight must be in [0, 1), got {fer2013_weight}")
    if not 0.0 <= fer2013_image_prob <= 1.0:
        raise ValueError(f"fer2013_image_prob must be in [0, 1], got {fer2013_image_prob}")
    for key, value in (("fer2013_weight", fer2013_weight), ("fer2013_image_prob", fer2013_image_prob)):
        if value > 0 and not fer2013_root:
            raise ValueError(f"{key} > 0 needs fer2013_root (FER2013's class folders, <split>/<class>/*.jpg)")
    root = str(root)
    requested = splits is not None
    result = SampleSet(label_set=LABEL_SET, labels=FERPLUS_CLASSES)
    all_counts: dict[str, dict[str, int]] = {}
    for split in _split_names(splits):
        folder = storage.join(root, SPLIT_FOLDERS[split])
        files = _list_folder(folder)
        if not files:
            if requested:
                raise FileNotFoundError(f"FER+ split {split!r}: no folder {folder}")
            continue
        copies: dict[str, Fer2013Copy] = {}
        if split == "train" and (fer2013_weight > 0 or fer2013_image_prob > 0):
            pngs = {name: uri for name, uri in files.items() if name.lower().endswith(".png")}
            copies = fer2013_copies(pngs, storage.join(str(fer2013_root), "train"))
        samples, counts = _read_split(root, split, mode, files, copies, fer2013_weight, fer2013_image_prob)
        if copies:
            log.info("FER+ %s: %d kept faces also carry FER2013's label (weight %.2f), %d read from "
                     "their FER2013 copy", SPLIT_FOLDERS[split], counts["fer2013_labelled"], fer2013_weight,
                     counts["fer2013_rendering"])
        result.splits[split] = samples
        all_counts[split] = {key: int(counts[key]) for key in (*COUNT_KEYS, "fer2013_labelled", "fer2013_rendering")
                             if key in counts}
    if not result.splits:
        raise FileNotFoundError(f"no FER+ split folder ({', '.join(SPLIT_FOLDERS.values())}) under {root}")
    return result, all_counts


def read_ferplus(root: str, mode: str = "majority", splits: Sequence[str] | None = None,
                 fer2013_root: str | None = None, fer2013_weight: float = 0.0,
                 fer2013_image_prob: float = 0.0) -> SampleSet:
    """Read FER+ (label set "ferplus", ``FERPLUS_CLASSES``); ``mode`` sets the train
    split's targets (see the module doc), val/test always use the test protocol.
    ``splits`` (some of train, val, test): None reads every split folder present; a
    requested split whose folder is absent is a FileNotFoundError.

    Both label sets: with ``fer2013_weight`` w > 0, each train face that has a copy in
    FER2013's class folders (``<fer2013_root>/train/<class>/``, matched by pixel ranks,
    ``emotion.data.fer2013_labels``) trains on ``(1 - w) * FER+ target + w * one-hot(FER2013
    label)``. With ``fer2013_image_prob`` p > 0, a fixed share p of the matched train faces
    (drawn from their file names) is read from the FER2013 copy instead of the PNG: the
    same face rendered another way (histogram-equalised, JPEG), so the model does not
    learn one release's rendering. val/test are never mixed: they keep the FER+ PNGs and
    test protocol."""
    return _read(root, mode, splits, fer2013_root, fer2013_weight, fer2013_image_prob)[0]


def ferplus_counts(root: str, mode: str = "majority", splits: Sequence[str] | None = None,
                   fer2013_root: str | None = None, fer2013_weight: float = 0.0,
                   fer2013_image_prob: float = 0.0) -> dict[str, dict[str, int]]:
    """{split: {kept / reason: number of images}} as ``read_ferplus`` with the same
    arguments keeps and leaves them out (keys ``COUNT_KEYS``, plus ``fer2013_labelled``
    and ``fer2013_rendering`` when FER2013's copies are used)."""
    return _read(root, mode, splits, fer2013_root, fer2013_weight, fer2013_image_prob)[1]
