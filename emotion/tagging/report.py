"""What a person sees of a tagging run without reading Parquet.

Two views of the rows a run committed (``TagSummary.files``):

* ``image_line``: one line per image, e.g. ``crowd.jpg: 3 people: happiness 0.91, neutral 0.60,
  sadness 0.55``, ``empty.jpg: no person``, ``bad.jpg: error: <reason>``;
* ``annotate``: each tagged image written as a JPEG with its face boxes, body boxes and
  "happiness 0.89" labels drawn, into a local folder or an ``s3://`` prefix.

A person's top emotion is the argmax of their ``scores`` against the label set stored
in the file's metadata, so it is defined for single- and multi-label models alike
(``emotions`` of a multi-label model may hold several names, or none).
"""

from __future__ import annotations

import io
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
import pyarrow.parquet as pq
from PIL import Image, ImageDraw, ImageFont

from emotion import storage
from emotion.images import ImageDecodeError, decode_image, resize_max_side
from emotion.schema import labels_from_schema
from emotion.tagging.sources import source_path

log = logging.getLogger(__name__)

# Only what the views need: reading ``level_scores`` and the rest of a large run is waste.
COLUMNS = ["image_id", "source", "source_bytes", "person_index", "face_box", "body_box", "scores", "error"]
ANNOTATE_MAX_SIDE = 1280  # annotated images are shrunk to this: enough to see, small to store
ANNOTATE_MIN_SIDE = 320  # and tiny ones (48x48 face crops) enlarged to this, so a label fits and reads
FACE_COLOUR = (255, 200, 0)  # amber
BODY_COLOUR = (0, 170, 255)  # sky blue: tells the derived body box from the detected face
JPEG_QUALITY = 90


@dataclass(frozen=True)
class Person:
    """One detected person: top emotion and boxes in original pixels (x1, y1, x2, y2)."""

    index: int
    emotion: Optional[str]  # None when the row has no scores
    score: float
    face_box: Optional[tuple[float, ...]]
    body_box: Optional[tuple[float, ...]]

    @property
    def label(self) -> str:
        return f"{self.emotion} {self.score:.2f}" if self.emotion is not None else "?"


@dataclass
class TaggedImage:
    """One input image of the output: its people in ``person_index`` order, or its error."""

    image_id: str
    source: str
    source_bytes: Optional[bytes]
    people: list[Person] = field(default_factory=list)
    error: Optional[str] = None

    @property
    def name(self) -> str:
        """The base name (after the last ``/``); ``\\xNN`` escapes of odd bytes kept as text."""
        return self.source.rsplit("/", 1)[-1]


# -- reading ---------------------------------------------------------------------------
def top_emotion(scores: Optional[Sequence[float]], labels: Sequence[str]) -> tuple[Optional[str], float]:
    """(label, score) of the highest score; (None, nan) without scores."""
    if scores is None or len(scores) == 0:
        return None, float("nan")
    best = int(np.argmax(np.asarray(scores, dtype=np.float64)))
    return labels[best], float(scores[best])


def _box(value: Optional[Sequence[float]]) -> Optional[tuple[float, ...]]:
    return tuple(float(v) for v in value) if value is not None else None


def read_images(files: Iterable[str]) -> list[TaggedImage]:
    """The images in committed output ``files`` (Parquet URIs), sorted by source.

    Rows are grouped by ``image_id`` (the hash of the exact name bytes), not by ``source``
    text: two names that differ only in non-UTF-8 bytes can show the same ``\\xNN`` text.
    """
    images: dict[str, TaggedImage] = {}
    for uri in files:
        fs, path = storage.get_filesystem(uri)
        table = pq.read_table(path, filesystem=fs, columns=COLUMNS)
        labels = labels_from_schema(table.schema)
        for row in table.to_pylist():
            image = images.setdefault(row["image_id"], TaggedImage(row["image_id"], row["source"], row["source_bytes"]))
            if row["error"] is not None:
                image.error = row["error"]
            elif row["person_index"] is not None:
                emotion, score = top_emotion(row["scores"], labels)
                image.people.append(Person(row["person_index"], emotion, score,
                                           _box(row["face_box"]), _box(row["body_box"])))
    for image in images.values():
        image.people.sort(key=lambda p: p.index)
    # Ray Data commits images in whatever order they finish; a listing by name reads better.
    return sorted(images.values(), key=lambda im: (im.source, im.image_id))


# -- one line per image ----------------------------------------------------------------
def image_line(image: TaggedImage) -> str:
    """``obama.jpg: 1 person: neutral 0.71``, ``empty.jpg: no person``, ``bad.jpg: error: ...``."""
    if image.error is not None:
        return f"{image.name}: error: {image.error}"
    if not image.people:
        return f"{image.name}: no person"
    count = f"{len(image.people)} person" if len(image.people) == 1 else f"{len(image.people)} people"
    return f"{image.name}: {count}: " + ", ".join(p.label for p in image.people)


def print_images(images: Iterable[TaggedImage], echo: Callable[[str], None] = print) -> None:
    """Print ``image_line`` of each image."""
    for image in images:
        echo(image_line(image))


# -- annotated copies ------------------------------------------------------------------
@dataclass
class AnnotateResult:
    """What ``annotate`` did: images written, and images skipped and why."""

    folder: str
    written: list[str] = field(default_factory=list)  # URIs of the JPEGs
    failed: int = 0  # error rows: nothing was found to draw
    unreadable: int = 0  # source gone or no longer decodable since the run read it

    def render(self) -> str:
        skipped = [f"{n} {what}" for n, what in ((self.failed, "failed"), (self.unreadable, "unreadable")) if n]
        more = f" (skipped {', '.join(skipped)})" if skipped else ""
        return f"annotated {len(self.written)} images into {self.folder}{more}"


def output_names(images: Sequence[TaggedImage]) -> dict[str, str]:
    """image_id -> JPEG file name: the source's base name with ``.jpg``; names that two
    images would share get the first 8 hex digits of their ``image_id``, so none is lost."""
    stems = {im.image_id: im.name.rsplit(".", 1)[0] if "." in im.name.lstrip(".") else im.name for im in images}
    counts = Counter(stem.lower() for stem in stems.values())  # case-insensitive file systems too
    return {image_id: f"{stem}-{image_id[:8]}.jpg" if counts[stem.lower()] > 1 else f"{stem}.jpg"
            for image_id, stem in stems.items()}


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def draw_people(pixels: np.ndarray, people: Sequence[Person], scale: float = 1.0) -> Image.Image:
    """``pixels`` with each person's body box, face box and label drawn.

    ``scale`` maps the pixels' coordinates to the boxes' (original = working * scale).
    """
    img = Image.fromarray(pixels)
    draw = ImageDraw.Draw(img)
    longer = max(img.size)
    width = max(2, round(longer / 320))
    font = _font(max(12, round(longer / 40)))
    # Bodies first: a face box drawn over its body box stays visible where they touch.
    for person in people:
        if person.body_box is not None:
            draw.rectangle([v / scale for v in person.body_box], outline=BODY_COLOUR, width=width)
    for person in people:
        if person.face_box is None:
            if person.body_box is not None:  # a single-stage model gives body boxes only: label those
                x1, y1, _, _ = (v / scale for v in person.body_box)
                _label(draw, person.label, x1, y1, font, img.width)
            continue
        x1, y1, x2, y2 = (v / scale for v in person.face_box)
        draw.rectangle([x1, y1, x2, y2], outline=FACE_COLOUR, width=width)
        _label(draw, person.label, x1, y1, font, img.width)
    return img


def _label(draw: ImageDraw.ImageDraw, text: str, x: float, y: float, font, image_width: int) -> None:
    """The label on a filled tag above the face box (below its top edge if there is no
    room), moved left where it would run off the image."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = 2
    tag_w, tag_h = right - left + 2 * pad, bottom - top + 2 * pad
    x = max(0.0, min(x, image_width - tag_w))
    tag_y = y - tag_h if y - tag_h >= 0 else y
    draw.rectangle([x, tag_y, x + tag_w, tag_y + tag_h], fill=FACE_COLOUR)
    draw.text((x + pad - left, tag_y + pad - top), text, fill=(0, 0, 0), font=font)


def fit(pixels: np.ndarray, max_side: int, min_side: int = ANNOTATE_MIN_SIDE) -> tuple[np.ndarray, float]:
    """Shrink to ``max_side`` or enlarge to ``min_side`` (longer side); returns (pixels,
    scale) with original = working * scale, as ``resize_max_side`` does."""
    longer = max(pixels.shape[:2])
    if longer >= min_side:
        return resize_max_side(pixels, max_side)
    ratio = min_side / longer
    size = (max(1, round(pixels.shape[1] * ratio)), max(1, round(pixels.shape[0] * ratio)))
    return np.asarray(Image.fromarray(pixels).resize(size, Image.BICUBIC)), longer / min_side


def _jpeg(img: Image.Image) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def annotate(images: Sequence[TaggedImage], folder: str, max_side: int = ANNOTATE_MAX_SIDE) -> AnnotateResult:
    """Write each image of ``images`` with its people drawn as ``folder/<name>.jpg``.

    Images are re-read from their sources and decoded upright, as tagging saw them, so
    the boxes (original pixels) fit; then shrunk to ``max_side`` (tiny ones enlarged, ``fit``). Error rows and sources
    that can no longer be read are counted, not raised: the tagging already succeeded.
    """
    result = AnnotateResult(folder.rstrip("/") or folder)
    names = output_names(images)
    for image in images:
        if image.error is not None:
            result.failed += 1
            continue
        try:
            decoded = decode_image(storage.read_bytes(source_path(image.source, image.source_bytes)))
        except (OSError, ImageDecodeError) as exc:  # StorageError and FileNotFoundError are OSErrors
            log.warning("not annotating %s: %s", image.source, exc)
            result.unreadable += 1
            continue
        pixels, scale = fit(decoded.pixels, max_side)
        uri = storage.join(folder, names[image.image_id])
        storage.write_bytes(uri, _jpeg(draw_people(pixels, image.people, scale)))
        result.written.append(uri)
    return result
