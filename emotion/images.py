"""Robust image decoding: bytes in, RGB uint8 array out, or a reason it failed.

Handles what real photo collections contain: EXIF orientation, grayscale, palette,
CMYK, 16-bit and alpha images. ``decode_image`` raises nothing but ``ImageDecodeError``:
Pillow and its format plugins fail on hostile bytes with many exception types
(``struct.error``, ``TypeError``, ``IndexError``, ...), and every one of them is turned
into that error, so one bad file becomes an error row (tagging, eval) or a 400 (serving)
and never stops a job. ``tests/test_decode_fuzz.py`` holds this to a seeded fuzz.

A damaged EXIF block does not cost the image: the pixels are still decoded, only the
orientation tag is ignored (cameras write broken maker notes often enough that refusing
those photos would lose real data).

``decode_one`` shrinks a decoded image to the predictor's working size; ``decode_batch``
(or ``DecodedBatch``, one image at a time) builds the batch ``EmotionPredictor.detect``
takes, failures as error rows. ``emotion.device_decode`` decodes JPEGs on a torch device
into the same batch.
"""

from __future__ import annotations

import io
import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)

# Decompression bombs: refuse images above this many pixels (PIL warns at 89 MP).
DEFAULT_MAX_PIXELS = 64_000_000

# Which file names are images, for every listing of image files (``emotion tag`` inputs,
# ``emotion eval`` class folders). Lower-case; listings compare case-insensitively. Every
# format here decodes through ``decode_image``; TIFF is how JAFFE ships.
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class ImageDecodeError(ValueError):
    """The bytes are not a readable image; the message says why."""


@dataclass(frozen=True)
class DecodedImage:
    """An RGB image (``pixels`` uint8 [H, W, 3]) with its size before any resizing."""

    pixels: np.ndarray
    original_height: int
    original_width: int
    format: str | None


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: scale the real value range to 8 bits instead of clipping.
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        return Image.fromarray(arr.astype(np.uint8), "L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA"):
        # Composite transparent pixels onto white, as viewers show them.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, draft_side: int | None = None) -> DecodedImage:
    """Decode image bytes to upright RGB.

    ``draft_side``: the longer side the caller will shrink the image to. A JPEG at least
    twice that size is then decoded at 1/2, 1/4 or 1/8 scale in the DCT (Pillow's draft
    mode; never below ``draft_side``), which is several times faster on camera photos;
    ``original_height``/``original_width`` stay those of the full image.

    Raises:
        ImageDecodeError: empty, truncated, unsupported, corrupt or oversized input; this
            is the only exception it raises (``MemoryError`` aside).
    """
    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Damaged metadata makes Pillow warn per file; over millions of files that is noise.
            warnings.simplefilter("ignore")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            fmt = img.format
            width, height = img.size
            if width * height > max_pixels:
                raise ImageDecodeError(
                    f"image is {width}x{height} = {width * height} pixels, above the limit of {max_pixels}"
                )
            if draft_side and fmt == "JPEG" and max(width, height) >= 2 * draft_side:
                ratio = draft_side / max(width, height)
                img.draft(None, (math.ceil(width * ratio), math.ceil(height * ratio)))
            img.load()  # forces a full decode: truncated files fail here
            img, turned = _upright(img)
            pixels = np.asarray(_to_rgb(img), dtype=np.uint8)
            # The upright full-size dimensions (orientations 5-8 swap the stored ones).
            upright_hw = (width, height) if turned else (height, width)
    except ImageDecodeError:
        raise
    except MemoryError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError("not an image file (format not recognised)") from None
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"image too large: {exc}") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(f"corrupt or truncated image: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - plugins raise struct.error, TypeError, IndexError, ...
        raise ImageDecodeError(f"corrupt image ({type(exc).__name__}: {exc})") from None
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.size == 0:
        raise ImageDecodeError(f"corrupt image: decoded to an array of shape {pixels.shape}")
    return DecodedImage(pixels, upright_hw[0], upright_hw[1], fmt)


def _upright(img: Image.Image) -> tuple[Image.Image, bool]:
    """Apply the EXIF orientation; returns the image and whether it was turned by 90
    degrees. A damaged EXIF block leaves the image as stored."""
    try:
        orientation = img.getexif().get(0x0112, 1)
        return ImageOps.exif_transpose(img), orientation in (5, 6, 7, 8)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - any EXIF parsing failure (struct.error, TypeError, ...)
        log.debug("ignoring a damaged EXIF block (%s: %s)", type(exc).__name__, exc)
        return img, False


def resize_max_side(pixels: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """Shrink so the longer side is at most ``max_side``; returns (pixels, scale).

    ``scale`` maps working coordinates back to the original: original = working * scale.
    Images already small enough are returned as they are (scale 1.0).
    """
    height, width = pixels.shape[:2]
    longer = max(height, width)
    if max_side <= 0 or longer <= max_side:
        return pixels, 1.0
    ratio = max_side / longer
    new_size = (max(1, round(width * ratio)), max(1, round(height * ratio)))
    resized = Image.fromarray(pixels).resize(new_size, Image.BILINEAR)
    return np.asarray(resized), longer / max_side


def working_size(height: int, width: int, max_side: int) -> tuple[int, int] | None:
    """The (height, width) ``resize_max_side`` shrinks an image of this size to, or None
    when it keeps it (already small enough, or ``max_side`` <= 0)."""
    longer = max(height, width)
    if max_side <= 0 or longer <= max_side:
        return None
    ratio = max_side / longer
    return max(1, round(height * ratio)), max(1, round(width * ratio))


def exif_orientation(img: Image.Image) -> int:
    """The EXIF orientation tag (1-8) of an opened image, read from its headers only (no
    pixels decoded); 1 when absent or when the EXIF block is damaged, as ``decode_image``
    then leaves the image as stored."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            orientation = img.getexif().get(0x0112, 1)
        return orientation if isinstance(orientation, int) and 1 <= orientation <= 8 else 1
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - as _upright: any EXIF parsing failure
        log.debug("ignoring a damaged EXIF block (%s: %s)", type(exc).__name__, exc)
        return 1


def decode_one(data: bytes | None, max_side: int, max_pixels: int) -> tuple[np.ndarray, float, int, int]:
    """Bytes -> (working pixels shrunk to ``max_side``, scale back to the original,
    original height, original width). Raises ``ImageDecodeError`` only."""
    decoded = decode_image(data or b"", max_pixels=max_pixels, draft_side=max_side)
    pixels, _ = resize_max_side(decoded.pixels, max_side)
    # From the full-size original: a draft-mode decode already shrank the pixels.
    original_longer = max(decoded.original_height, decoded.original_width)
    scale = original_longer / max(pixels.shape[:2]) if original_longer != max(pixels.shape[:2]) else 1.0
    return pixels, scale, decoded.original_height, decoded.original_width


# A failed image's pixels: keeps the image column rectangular in rank.
_PLACEHOLDER = np.zeros((1, 1, 3), dtype=np.uint8)


class DecodedBatch:
    """Builds the batch ``EmotionPredictor.detect`` takes, one image at a time, so a reader
    can drop each file's bytes as soon as it is decoded (memory per batch is then bounded
    by the decoded images, not by the files' sizes)."""

    def __init__(self) -> None:
        self.sources: list[str] = []
        self.source_bytes: list[bytes] = []
        self.images: list[np.ndarray] = []
        self.scale: list[float] = []
        self.heights: list[int] = []
        self.widths: list[int] = []
        self.errors: list[str] = []

    def add(self, source: str, data: bytes | None, max_side: int, max_pixels: int, *,
            source_bytes: bytes = b"", error: str | None = None) -> None:
        """Decode ``data`` (unless ``error`` already says why there is none) and append it;
        a failure becomes the image's error."""
        pixels, scale, height, width = _PLACEHOLDER, 1.0, 0, 0
        if error is None:
            try:
                pixels, scale, height, width = decode_one(data, max_side, max_pixels)
            except ImageDecodeError as exc:
                error = str(exc)
        self.append(source, pixels, scale, height, width, source_bytes=source_bytes, error=error)

    def append(self, source: str, pixels: np.ndarray, scale: float, height: int, width: int, *,
               source_bytes: bytes = b"", error: str | None = None) -> None:
        """Append an image decoded elsewhere (``decode_one``'s four values)."""
        self.sources.append(source)
        self.source_bytes.append(source_bytes)
        self.images.append(pixels)
        self.scale.append(scale)
        self.heights.append(height)
        self.widths.append(width)
        # "" means no error: an all-None column would not survive Arrow conversion as strings.
        self.errors.append(error or "")

    def to_batch(self) -> dict[str, np.ndarray]:
        images = np.empty(len(self.images), dtype=object)
        images[:] = self.images  # ragged [H, W, 3] arrays: an object column
        return {
            "source": np.asarray(self.sources, dtype=object),
            "source_bytes": np.asarray(self.source_bytes, dtype=object),
            "image": images,
            "scale": np.asarray(self.scale, dtype=np.float32),
            "image_height": np.asarray(self.heights, dtype=np.int32),
            "image_width": np.asarray(self.widths, dtype=np.int32),
            "error": np.asarray(self.errors, dtype=object),
        }


def decode_batch(sources: Sequence[str], payloads: Sequence[bytes | None], max_side: int,
                 max_pixels: int, read_errors: Sequence[str | None] | None = None,
                 decoded: Sequence[tuple[np.ndarray, float, int, int] | None] | None = None
                 ) -> dict[str, np.ndarray]:
    """Decode raw bytes with Pillow (``decode_one``) into the batch
    ``EmotionPredictor.detect`` takes; failures become error rows.

    ``read_errors``: per image, why its bytes could not be read (None: read). ``decoded``:
    per image, ``decode_one``'s four values where another decoder already has them
    (``emotion.device_decode.decode_batch_on_device``), None where Pillow is to decode it.
    """
    errors = list(read_errors) if read_errors is not None else [None] * len(sources)
    done = list(decoded) if decoded is not None else [None] * len(sources)
    batch = DecodedBatch()
    for source, data, error, result in zip(sources, payloads, errors, done):
        if result is not None:
            batch.append(source, *result)
        else:
            batch.add(source, data, max_side, max_pixels, error=error)
    return batch.to_batch()
