"""Decoding raises nothing but ImageDecodeError, on a seeded fuzz of real images.

Every mutation either decodes to an RGB array or raises ``ImageDecodeError``; anything
else ("an escape") would stop a tagging job, crash eval and answer 500 in serving.
The default run tries 5,000 mutations over five formats; ``slow`` tries 50,000.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from emotion.images import ImageDecodeError, decode_image
from tests.fuzz_images import FORMATS, base_images, exif_span, mutate

pytestmark = pytest.mark.unit

MAX_PIXELS = 2_000_000  # mutated headers can claim huge sizes: keep each decode cheap


def _fuzz(bases: dict[str, bytes], per_format: int, first_seed: int = 0) -> tuple[Counter, list[str]]:
    outcomes: Counter = Counter()
    escapes: list[str] = []
    for fmt in FORMATS:
        for seed in range(first_seed, first_seed + per_format):
            m = mutate(bases[fmt], fmt, seed)
            try:
                decoded = decode_image(m.data, max_pixels=MAX_PIXELS)
            except ImageDecodeError:
                outcomes["error"] += 1
            except Exception as exc:  # noqa: BLE001 - what the test exists to find
                escapes.append(f"{fmt} seed={seed} kind={m.kind}: {type(exc).__name__}: {exc}")
            else:
                assert decoded.pixels.dtype == np.uint8 and decoded.pixels.ndim == 3 and decoded.pixels.shape[2] == 3
                outcomes["decoded"] += 1
    return outcomes, escapes


@pytest.fixture(scope="module")
def bases(sample_photos):
    return base_images(sample_photos["obama"])


def test_base_images_decode(bases):
    for fmt, data in bases.items():
        decoded = decode_image(data)
        assert decoded.format == fmt
    start, end = exif_span(bases["JPEG"])
    assert end - start > 100  # the EXIF block the fuzz aims at is really there


def test_mutations_are_deterministic(bases):
    assert mutate(bases["JPEG"], "JPEG", 7) == mutate(bases["JPEG"], "JPEG", 7)
    assert mutate(bases["JPEG"], "JPEG", 7).data != mutate(bases["JPEG"], "JPEG", 8).data


def test_fuzz_decode_no_escapes(bases):
    outcomes, escapes = _fuzz(bases, per_format=1000)
    assert not escapes, f"{len(escapes)} escapes of 5000:\n" + "\n".join(escapes[:20])
    # The fuzz must exercise both outcomes, or it tests nothing.
    assert outcomes["error"] > 1000 and outcomes["decoded"] > 1000, outcomes


@pytest.mark.slow
def test_fuzz_decode_no_escapes_long(bases):
    outcomes, escapes = _fuzz(bases, per_format=10_000, first_seed=10_000)
    assert not escapes, f"{len(escapes)} escapes of 50000:\n" + "\n".join(escapes[:20])


def test_poison_exif_jpeg_still_decodes(poison_exif_jpeg):
    """The case found in the wild: a JPEG whose EXIF block makes exif_transpose raise
    struct.error. The pixels are fine, so the image decodes (orientation ignored)."""
    from PIL import ImageOps, Image
    import io

    with pytest.raises(Exception) as info:  # the raw failure this module guards against
        ImageOps.exif_transpose(Image.open(io.BytesIO(poison_exif_jpeg)))
    assert not isinstance(info.value, (OSError, ValueError, SyntaxError))
    decoded = decode_image(poison_exif_jpeg)
    assert decoded.pixels.shape[2] == 3 and decoded.format == "JPEG"
