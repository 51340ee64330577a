"""detector=full_frame: one face per image, the whole image or the face found inside it."""

import numpy as np
import pytest
from PIL import Image

from emotion.models.detection.full_frame import FullFrameDetector, face_square
from emotion.models.loading import build_detector_from_config
from emotion.settings import FullFrameSettings
from tests.configs import full_frame_detector, retinaface_settings

pytestmark = pytest.mark.unit


def test_face_square_is_centred_on_the_box_with_its_longer_side():
    np.testing.assert_allclose(face_square(np.array([40, 30, 60, 70]), 100, 100), [30, 30, 70, 70])


def test_face_square_is_moved_inside_the_image():
    np.testing.assert_allclose(face_square(np.array([0, 80, 20, 100]), 100, 120), [0, 80, 20, 100])
    np.testing.assert_allclose(face_square(np.array([-10, 90, 30, 110]), 100, 120), [0, 60, 40, 100])


def test_face_square_that_does_not_fit_is_none():
    assert face_square(np.array([0, 0, 60, 120]), 100, 200) is None  # taller than the image
    assert face_square(np.array([5, 5, 5, 5]), 100, 100) is None  # no area


def test_without_a_finder_the_whole_image_is_the_face():
    found = FullFrameDetector().detect([np.zeros((30, 40, 3), np.uint8)])
    np.testing.assert_array_equal(found[0]["boxes"], [[0, 0, 40, 30]])
    assert found[0]["scores"].tolist() == [1.0] and np.isnan(found[0]["landmarks"]).all()


@pytest.fixture(scope="module")
def finding_detector() -> FullFrameDetector:
    settings = FullFrameSettings.model_validate(full_frame_detector(finder=retinaface_settings(device="cpu").model_dump()))
    assert settings.find_face, "find_face is on by default"
    return build_detector_from_config(settings)


def test_the_face_in_a_photo_becomes_a_square_crop_inside_it(finding_detector, sample_photos):
    photo = np.asarray(Image.open(sample_photos["obama"]).convert("RGB"))
    plain = finding_detector.finder.detect([photo])[0]["boxes"][0]
    (found,) = finding_detector.detect([photo])
    x1, y1, x2, y2 = found["boxes"][0]
    height, width = photo.shape[:2]
    assert x2 - x1 == pytest.approx(y2 - y1) == pytest.approx(max(plain[2] - plain[0], plain[3] - plain[1]))
    assert 0 <= x1 and 0 <= y1 and x2 <= width and y2 <= height and x2 - x1 < 0.6 * min(height, width)
    assert x1 <= plain[0] and y1 <= plain[1] and x2 >= plain[2] and y2 >= plain[3]  # the face is inside the square
    assert found["scores"].tolist() == [1.0] and np.isnan(found["landmarks"]).all()


def test_an_image_without_a_face_keeps_the_whole_image(finding_detector, sample_photos):
    photo = np.asarray(Image.open(sample_photos["obama"]).convert("RGB"))
    blank = np.full((64, 96, 3), 128, np.uint8)
    found = finding_detector.detect([blank, photo, blank])
    assert len(found) == 3
    np.testing.assert_array_equal(found[0]["boxes"], [[0, 0, 96, 64]])
    np.testing.assert_array_equal(found[2]["boxes"], [[0, 0, 96, 64]])
    assert found[1]["boxes"][0, 2] - found[1]["boxes"][0, 0] < 300


def test_find_face_false_builds_no_finder():
    settings = FullFrameSettings.model_validate(full_frame_detector(find_face=False))
    assert build_detector_from_config(settings).finder is None
