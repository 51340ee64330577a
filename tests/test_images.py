"""Decoding of the image kinds real collections contain."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from emotion.images import ImageDecodeError, decode_image, resize_max_side
from tests.conftest import write_awkward_images

pytestmark = pytest.mark.unit


def test_every_awkward_kind_decodes_or_fails_clearly(tmp_path, sample_photos):
    expected = write_awkward_images(tmp_path, sample_photos["obama"])
    original = Image.open(sample_photos["obama"])
    for name, error in expected.items():
        data = (tmp_path / name).read_bytes()
        if error is None:
            decoded = decode_image(data)
            assert decoded.pixels.dtype == np.uint8 and decoded.pixels.ndim == 3 and decoded.pixels.shape[2] == 3, name
            assert (decoded.original_width, decoded.original_height) == original.size, name
        else:
            with pytest.raises(ImageDecodeError, match=error):
                decode_image(data)


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, :20] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(pixels).save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=95)
    decoded = decode_image((tmp_path / "r.jpg").read_bytes())
    assert decoded.pixels.shape[:2] == (40, 20)  # upright: portrait
    # After a clockwise turn, the white left half is on top.
    assert decoded.pixels[:20].mean() > 200 and decoded.pixels[20:].mean() < 50


def test_sixteen_bit_keeps_its_range():
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    import io

    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, format="PNG")
    decoded = decode_image(buf.getvalue())
    assert decoded.pixels.min() == 0 and decoded.pixels.max() == 255


def test_pixel_limit_is_enforced():
    import io

    buf = io.BytesIO()
    Image.new("RGB", (100, 100)).save(buf, format="PNG")
    with pytest.raises(ImageDecodeError, match="above the limit"):
        decode_image(buf.getvalue(), max_pixels=5_000)


def test_resize_max_side_reports_scale():
    pixels = np.zeros((300, 600, 3), dtype=np.uint8)
    small, scale = resize_max_side(pixels, 200)
    assert small.shape == (100, 200, 3) and scale == pytest.approx(3.0)
    same, scale = resize_max_side(pixels, 1000)
    assert same is pixels and scale == 1.0


def test_large_jpegs_decode_in_draft_mode_to_the_same_working_image(sample_photos):
    """A JPEG at least twice the working size is decoded at a DCT scale (Pillow draft
    mode): same working size and scale back to the original, nearly the same pixels,
    EXIF orientation included."""
    import io

    from emotion.images import decode_one

    photo = Image.open(sample_photos["batman"]).resize((2400, 2100))
    for orientation in (1, 6):
        exif = Image.Exif()
        exif[0x0112] = orientation
        buffer = io.BytesIO()
        photo.save(buffer, "JPEG", quality=92, exif=exif.tobytes())
        data = buffer.getvalue()
        full = decode_image(data)
        draft = decode_image(data, draft_side=960)
        assert max(draft.pixels.shape[:2]) < max(full.pixels.shape[:2])  # decoded smaller
        assert (draft.original_height, draft.original_width) == (full.original_height, full.original_width)
        expected_hw = (2100, 2400) if orientation == 1 else (2400, 2100)
        assert (draft.original_height, draft.original_width) == expected_hw
        working, scale, height, width = decode_one(data, 960, 64_000_000)
        reference, reference_scale = resize_max_side(full.pixels, 960)
        assert working.shape == reference.shape and scale == pytest.approx(reference_scale)
        assert (height, width) == expected_hw
        assert np.abs(working.astype(int) - reference.astype(int)).mean() < 2.0


def test_small_and_non_jpeg_images_are_not_drafted(sample_photos):
    data = open(sample_photos["obama"], "rb").read()  # 550 x 500: below twice the working size
    assert np.array_equal(decode_image(data, draft_side=960).pixels, decode_image(data).pixels)
