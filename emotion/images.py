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
"""

from __future__ import annotations

import io
import logging
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)

# Decompression bombs: refuse images above this many pixels (PIL warns at 89 MP).
DEFAULT_MAX_PIXELS = 64_000_000


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


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Decode image bytes to upright RGB.

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
            img.load()  # forces a full decode: truncated files fail here
            img = _upright(img)
            rgb = _to_rgb(img)
            pixels = np.asarray(rgb, dtype=np.uint8)
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
    return DecodedImage(pixels, pixels.shape[0], pixels.shape[1], fmt)


def _upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a damaged EXIF block leaves the image as stored."""
    try:
        return ImageOps.exif_transpose(img)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - any EXIF parsing failure (struct.error, TypeError, ...)
        log.debug("ignoring a damaged EXIF block (%s: %s)", type(exc).__name__, exc)
        return img


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
