"""``predictor.decode=device``: JPEGs decoded in one batched ``torchvision.io.decode_jpeg``
call (nvJPEG on CUDA, libjpeg-turbo on CPU), turned upright and shrunk on the device.

It returns what ``emotion.images.decode_batch`` returns (numpy uint8 [H, W, 3] per
image, scale, original size, error), with the same orientation and colours:

* which files: Pillow opens every file first, headers only (no pixels), as
  ``decode_image`` does. A baseline or progressive JPEG in YCbCr or grayscale ("RGB"
  or "L" to Pillow) within ``max_pixels`` that ends with its end-of-image marker goes to
  ``decode_jpeg``; everything else (other formats, CMYK JPEGs, files with bytes after
  the end marker, a truncated file, anything Pillow refuses) and any file
  ``decode_jpeg`` fails on takes the Pillow path (``emotion.images.decode_one``), which
  also turns a corrupt file into the error its row carries;
* orientation: the EXIF tag as Pillow reads it (``emotion.images.exif_orientation``: a
  damaged EXIF block means "as stored", as in ``decode_image``; a tag Pillow reads but
  could not rewrite sends the file down the Pillow path), applied with flips and
  transposes on the device. ``decode_jpeg``'s own ``apply_exif_orientation`` exists on
  CPU only, so one rule serves both devices;
* colours: ``ImageReadMode.RGB`` (grayscale replicated to three channels, as Pillow's
  ``convert("RGB")``). On CPU, libjpeg-turbo gives Pillow's pixels exactly (the sample
  photos, grayscale, progressive, 4:4:4/4:2:2/4:2:0, all eight orientations: 0 grey
  levels of difference, ``tests/test_device_decode.py``); nvJPEG's IDCT and chroma
  upsampling may differ by a grey level or two (checked by a ``gpu`` test);
* shrinking: the size ``resize_max_side`` picks (``emotion.images.working_size``), with
  torch's antialiased bilinear filter (PIL's filter; uint8 on CPU, float then rounded
  on CUDA). The Pillow path decodes a JPEG at least twice ``max_side`` in Pillow's draft
  mode (1/2-1/8 scale in the DCT); the device decodes every pixel and shrinks, so such
  images differ from the Pillow path's by the draft mode's own difference (mean < 2 grey levels,
  as ``tests/test_images.py`` holds the draft mode to).

``torchvision.io.decode_jpeg`` is deprecated from torchvision 0.29 in favour of
TorchCodec; its deprecation warning is silenced here.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from emotion.images import decode_batch, exif_orientation, working_size

_JPEG_END = b"\xff\xd9"


def _plan(data: bytes | None, max_pixels: int) -> tuple[int, int, int] | None:
    """(stored height, width, EXIF orientation) of a JPEG the device may decode; None
    sends the file down the Pillow path."""
    if not data or not data.startswith(b"\xff\xd8") or not data.endswith(_JPEG_END):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(data))
            if img.format != "JPEG" or img.mode not in ("RGB", "L"):
                return None
            width, height = img.size
            if width * height > max_pixels or width * height > (Image.MAX_IMAGE_PIXELS or max_pixels):
                return None  # the Pillow path words the error
            orientation = exif_orientation(img)
            if orientation != 1:
                # exif_transpose also rewrites the EXIF block without the tag; where that
                # fails, decode_image keeps the image as stored. Let the Pillow path decide.
                exif = img.getexif()
                del exif[0x0112]
                exif.tobytes()
            return height, width, orientation
    except Exception:  # noqa: BLE001 - whatever Pillow makes of it, the Pillow path says it again
        return None


def upright(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """[C, H, W] as ``PIL.ImageOps.exif_transpose`` turns an image with this EXIF orientation."""
    if orientation == 2:
        return image.flip(-1)
    if orientation == 3:
        return image.flip(-2, -1)
    if orientation == 4:
        return image.flip(-2)
    if orientation == 5:
        return image.transpose(-2, -1)
    if orientation == 6:
        return image.rot90(-1, dims=(-2, -1))  # 90 degrees clockwise
    if orientation == 7:
        return image.transpose(-2, -1).flip(-2, -1)
    if orientation == 8:
        return image.rot90(1, dims=(-2, -1))  # 90 degrees counter-clockwise
    return image


def shrink(image: torch.Tensor, max_side: int) -> torch.Tensor:
    """uint8 [3, H, W] -> uint8 [3, h, w] at the size ``resize_max_side`` picks, with
    the antialiased bilinear filter (uint8 kernel on CPU, float on CUDA)."""
    size = working_size(image.shape[1], image.shape[2], max_side)
    if size is None:
        return image
    if image.device.type == "cpu":
        return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    resized = F.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False, antialias=True)
    return resized[0].round_().clamp_(0, 255).to(torch.uint8)


def _decode_jpegs(payloads: list[bytes], device: torch.device) -> list[torch.Tensor | None]:
    """One batched ``decode_jpeg`` call; if it fails, one call per file (None where it fails)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    inputs = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in payloads]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return list(decode_jpeg(inputs, mode=ImageReadMode.RGB, device=device))
        except Exception:  # noqa: BLE001 - one bad file fails the batch: find it
            out: list[torch.Tensor | None] = []
            for tensor in inputs:
                try:
                    out.append(decode_jpeg(tensor, mode=ImageReadMode.RGB, device=device))
                except Exception:  # noqa: BLE001 - the Pillow path decides what is wrong
                    out.append(None)
            return out


def decode_on_device(payloads: Sequence[bytes | None], max_side: int, max_pixels: int,
                     device: torch.device | str) -> list[tuple[np.ndarray, float, int, int] | None]:
    """Per payload, what ``decode_one`` returns (working pixels, scale, original height,
    width), or None for a file the device did not decode (the Pillow path takes it)."""
    device = torch.device(device)
    plans = [_plan(data, max_pixels) for data in payloads]
    chosen = [i for i, plan in enumerate(plans) if plan is not None]
    results: list[tuple[np.ndarray, float, int, int] | None] = [None] * len(payloads)
    if not chosen:
        return results
    decoded = _decode_jpegs([payloads[i] for i in chosen], device)
    for i, image in zip(chosen, decoded):
        height, width, orientation = plans[i]
        if image is None or image.ndim != 3 or image.shape[0] != 3 or tuple(image.shape[1:]) != (height, width):
            continue  # failed, or not what the headers promised: the Pillow path
        image = upright(image, orientation)
        original_h, original_w = image.shape[1:]
        pixels = shrink(image, max_side)
        longer, working_longer = max(original_h, original_w), max(pixels.shape[1:])
        scale = longer / working_longer if longer != working_longer else 1.0
        results[i] = (np.ascontiguousarray(pixels.permute(1, 2, 0).cpu().numpy()), scale, int(original_h),
                      int(original_w))
    return results


def decode_batch_on_device(sources: Sequence[str], payloads: Sequence[bytes | None], max_side: int,
                           max_pixels: int, read_errors: Sequence[str | None] | None = None,
                           device: torch.device | str = "cpu") -> dict[str, np.ndarray]:
    """``emotion.images.decode_batch`` with the JPEGs decoded on ``device`` (CUDA or CPU)
    in one batched ``decode_jpeg`` call, turned upright and shrunk there; every other
    file, and any the device fails on, takes the Pillow path."""
    errors = list(read_errors) if read_errors is not None else [None] * len(sources)
    wanted = [i for i, err in enumerate(errors) if err is None]
    decoded: list[tuple[np.ndarray, float, int, int] | None] = [None] * len(sources)
    for i, result in zip(wanted, decode_on_device([payloads[i] for i in wanted], max_side, max_pixels, device)):
        decoded[i] = result
    return decode_batch(sources, payloads, max_side, max_pixels, errors, decoded=decoded)
