"""Batched JPEG decoding on the device (``emotion.device_decode``, ``predictor.decode``)
against the Pillow path (``emotion.images.decode_batch``).

Run here with device "cpu" (libjpeg-turbo through torchvision); the ``gpu`` tests run
nvJPEG. Measured on CPU: the sample photos, grayscale, progressive and every EXIF
orientation decode to Pillow's pixels exactly (0 grey levels); a photo that is shrunk
(batman, 1440 -> 960) differs by at most 1 level (torch's uint8 antialiased bilinear vs
PIL's); a JPEG at least twice ``max_side``, which today's path decodes in draft mode,
differs by the draft mode's own amount (mean < 2 levels).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from emotion.device_decode import decode_batch_on_device, decode_on_device
from emotion.images import decode_batch

from tests.conftest import jpeg_bytes, needs_cuda, write_awkward_images

MAX_PIXELS = 64_000_000
pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("one_torch_thread")]


def both(names, payloads, max_side=960, device="cpu", read_errors=None):
    today = decode_batch(names, payloads, max_side, MAX_PIXELS, read_errors)
    ours = decode_batch_on_device(names, payloads, max_side, MAX_PIXELS, read_errors, device=device)
    for column in ("source", "image_height", "image_width", "error"):
        np.testing.assert_array_equal(ours[column], today[column], err_msg=column)
    np.testing.assert_allclose(ours["scale"], today["scale"], rtol=1e-6)
    return today, ours


def marked(height: int = 60, width: int = 90) -> np.ndarray:
    """An image whose every orientation looks different: a colour ramp and a red corner."""
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // width, y * 255 // height, np.full_like(x, 90)], axis=-1).astype(np.uint8)
    pixels[:12, :20] = (255, 0, 0)
    return pixels


def with_orientation(pixels: np.ndarray, orientation: int, **save) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return jpeg_bytes(pixels, exif=exif.tobytes(), **save)


def test_sample_photos_decode_to_todays_pixels(sample_photos):
    names = list(sample_photos)
    payloads = [sample_photos[n].read_bytes() for n in names]
    assert all(r is not None for r in decode_on_device(payloads, 960, MAX_PIXELS, "cpu"))  # all on the device
    today, ours = both(names, payloads)
    for name, a, b in zip(names, today["image"], ours["image"]):
        assert a.shape == b.shape and b.dtype == np.uint8 and b.flags["C_CONTIGUOUS"], name
        difference = np.abs(a.astype(int) - b.astype(int))
        print(f"{name} {a.shape}: mean {difference.mean():.4f}, max {difference.max()}")
        if max(a.shape) < 960:
            assert difference.max() == 0, name  # not shrunk: libjpeg-turbo gives Pillow's pixels
        else:
            assert difference.max() <= 1 and difference.mean() < 0.05, name  # shrunk on the device


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_as_pillow_turns_it(orientation):
    data = with_orientation(marked(), orientation, quality=95)
    today, ours = both(["m.jpg"], [data])
    np.testing.assert_array_equal(ours["image"][0], today["image"][0])
    # decode_jpeg's own EXIF handling (CPU only) agrees with our flips and transposes.
    from torchvision.io import ImageReadMode, decode_jpeg

    own = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB,
                      apply_exif_orientation=True)
    np.testing.assert_array_equal(own.permute(1, 2, 0).numpy(), ours["image"][0])


@pytest.mark.parametrize("orientation", [1, 6])
def test_a_large_jpeg_matches_todays_draft_decode(sample_photos, orientation):
    photo = np.asarray(Image.open(sample_photos["batman"]).convert("RGB").resize((2400, 2100)))
    data = with_orientation(photo, orientation, quality=92)
    today, ours = both(["big.jpg"], [data])
    a, b = today["image"][0], ours["image"][0]
    assert a.shape == b.shape == ((840, 960, 3) if orientation == 1 else (960, 840, 3))
    difference = np.abs(a.astype(int) - b.astype(int)).mean()
    print(f"2400x2100 JPEG, orientation {orientation}: mean difference from the draft decode {difference:.3f}")
    assert difference < 2.0


def test_gray_cmyk_progressive_and_other_kinds(tmp_path, sample_photos):
    rgb = Image.open(sample_photos["obama"]).convert("RGB")
    kinds = {}
    for name, image, save in (("gray.jpg", rgb.convert("L"), {}), ("cmyk.jpg", rgb.convert("CMYK"), {}),
                              ("progressive.jpg", rgb, {"progressive": True}),
                              ("444.jpg", rgb, {"subsampling": 0}), ("png.png", rgb, {})):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG" if name.endswith("png") else "JPEG", **save)
        kinds[name] = buffer.getvalue()
    on_device = decode_on_device(list(kinds.values()), 960, MAX_PIXELS, "cpu")
    # CMYK JPEGs and other formats take today's path by design.
    assert [r is not None for r in on_device] == [True, False, True, True, False]
    today, ours = both(list(kinds), list(kinds.values()))
    for name, a, b in zip(kinds, today["image"], ours["image"]):
        np.testing.assert_array_equal(b, a, err_msg=name)


def test_awkward_files_and_errors_give_todays_rows(tmp_path, sample_photos):
    expected = write_awkward_images(tmp_path, sample_photos["obama"])
    whole = (tmp_path / "rotated_exif.jpg").read_bytes()
    extra = {
        "trailing_bytes.jpg": whole + b"\x00junk after the end marker",
        "broken_middle.jpg": whole[:2000] + bytes(255 - c for c in whole[2000:2200]) + whole[2200:],
        "header_only.jpg": whole[:600] + b"\xff\xd9",
        "none.jpg": None,
    }
    names = list(expected) + list(extra)
    payloads = [(tmp_path / n).read_bytes() for n in expected] + list(extra.values())
    today, ours = both(names, payloads)
    for name, a, b, error in zip(names, today["image"], ours["image"], ours["error"]):
        np.testing.assert_array_equal(b, a, err_msg=name)
        if expected.get(name):
            assert expected[name] in error, (name, error)
    # Read errors pass through untouched.
    _, passed = both(["a.jpg", "b.jpg"], [whole, whole], read_errors=[None, "file too large"])
    assert list(passed["error"]) == ["", "file too large"] and passed["image"][1].shape == (1, 1, 3)


def test_a_damaged_exif_block_is_handled_as_today(poison_exif_jpeg):
    today, ours = both(["poison.jpg"], [poison_exif_jpeg])
    np.testing.assert_array_equal(ours["image"][0], today["image"][0])


def test_pixel_limit_and_a_failed_batch_call(monkeypatch, sample_photos):
    data = sample_photos["trump"].read_bytes()
    too_big = decode_batch_on_device(["t.jpg"], [data], 960, 1000, device="cpu")
    assert "above the limit" in too_big["error"][0]
    # One file that decode_jpeg refuses fails the batched call: each file is then tried alone.
    import torchvision.io

    real = torchvision.io.decode_jpeg
    calls = []

    def refuse_lists(inputs, **kwargs):
        calls.append(type(inputs).__name__)
        if isinstance(inputs, list):
            raise RuntimeError("one bad file")
        return real(inputs, **kwargs)

    monkeypatch.setattr(torchvision.io, "decode_jpeg", refuse_lists)
    today, ours = both(["a.jpg", "b.jpg"], [data, data])
    assert calls == ["list", "Tensor", "Tensor"]
    np.testing.assert_array_equal(ours["image"][1], today["image"][1])


def test_predictor_decode_modes(sample_photos):
    from emotion.crops import CropSpec
    from emotion.models.protocol import InputSpec
    from emotion.predictor import EmotionPredictor

    spec = InputSpec(name="m", levels=("head",), input_size=32, labels=("a", "b"), multi_label=False,
                     model_id="m@sha256:0")
    crop = CropSpec(levels=("head",), size=32, head_expand=1.25, max_side=960)

    def make(decode):
        return EmotionPredictor(None, None, spec=spec, crop=crop, threshold=0.5, max_people=5, decode=decode,
                                person_threshold=None)

    assert make("auto").decode_mode == "pil"  # no CUDA here: today's path
    data = sample_photos["obama"].read_bytes()
    a, b = make("pil").decode(["o.jpg"], [data]), make("device").decode(["o.jpg"], [data])
    np.testing.assert_array_equal(a["image"][0], b["image"][0])
    with pytest.raises(ValueError, match="predictor.decode"):
        make("nvjpeg")


@pytest.mark.gpu
@needs_cuda
def test_cuda_decode_matches_pillow(sample_photos):
    """nvJPEG's IDCT and chroma upsampling may differ from libjpeg-turbo's by a level or two."""
    names = [*sample_photos, *[f"orientation{o}" for o in range(1, 9)]]
    payloads = [sample_photos[n].read_bytes() for n in sample_photos]
    payloads += [with_orientation(marked(), o, quality=95) for o in range(1, 9)]
    assert all(r is not None for r in decode_on_device(payloads, 960, MAX_PIXELS, "cuda"))
    today, ours = both(names, payloads, device="cuda")
    for name, a, b in zip(names, today["image"], ours["image"]):
        assert a.shape == b.shape, name
        difference = np.abs(a.astype(int) - b.astype(int))
        print(f"cuda {name}: mean {difference.mean():.3f}, max {difference.max()}")
        assert difference.mean() < 1.5, name
