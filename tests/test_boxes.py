"""Box helpers: clipping, IoU, square face-crop expansion and the face -> body geometry."""

import numpy as np
import pytest

from emotion.boxes import body_box_from_face, box_area, box_iou, clip_boxes

pytestmark = pytest.mark.unit

IMAGE_HW = (100, 200)  # height 100, width 200


def test_clip_boxes_limits_each_coordinate_to_the_image():
    boxes = np.array([[-10, -5, 250, 120], [10, 20, 30, 40], [300, 300, 400, 400]], np.float64)
    clipped = clip_boxes(boxes, IMAGE_HW)
    assert clipped.dtype == np.float32
    np.testing.assert_array_equal(clipped, [[0, 0, 200, 100], [10, 20, 30, 40], [200, 100, 200, 100]])
    np.testing.assert_array_equal(boxes[0], [-10, -5, 250, 120])  # input untouched


def test_empty_arrays_keep_their_shape():
    empty = np.zeros((0, 4), np.float32)
    assert clip_boxes(empty, IMAGE_HW).shape == (0, 4)
    assert body_box_from_face(empty, IMAGE_HW).shape == (0, 4)
    assert box_iou(empty, np.array([[0, 0, 1, 1]])).shape == (0, 1)
    assert box_iou(empty, empty).shape == (0, 0)


@pytest.mark.parametrize("bad", [np.zeros((3,)), np.zeros((2, 5)), np.array([[0, 0, np.nan, 1]])])
def test_malformed_boxes_are_rejected_with_a_clear_message(bad):
    with pytest.raises(ValueError, match="boxes"):
        clip_boxes(bad, IMAGE_HW)


def test_bad_image_size_is_rejected():
    with pytest.raises(ValueError, match="image_hw"):
        clip_boxes(np.zeros((1, 4)), (0, 10))


def test_box_iou_known_values_and_degenerate_boxes():
    a = np.array([[0, 0, 10, 10], [0, 0, 0, 0]], np.float32)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 0, 0]], np.float32)
    iou = box_iou(a, b)
    assert iou.shape == (2, 4) and iou.dtype == np.float32
    np.testing.assert_allclose(iou[0], [1.0, 50 / 150, 0.0, 0.0], rtol=1e-6)
    np.testing.assert_array_equal(iou[1], [0, 0, 0, 0])  # zero-area pair: 0, not NaN
    np.testing.assert_allclose(box_iou(b, a), iou.T)


def test_box_area_treats_inverted_boxes_as_empty():
    np.testing.assert_array_equal(box_area(np.array([[0, 0, 4, 5], [4, 0, 0, 5]])), [20, 0])


def test_body_box_geometry_inside_the_image():
    face = np.array([[90, 10, 110, 20]], np.float32)  # w 20, h 10
    body = body_box_from_face(face, (1000, 1000))
    np.testing.assert_array_equal(body, [[70, 5, 130, 80]])  # 3 w wide, 0.5 h above, 7 h below top


def test_body_box_is_clipped_and_contains_the_face():
    faces = np.array([[5, 5, 45, 55], [150, 60, 190, 95]], np.float32)
    bodies = body_box_from_face(faces, IMAGE_HW)
    assert (bodies[:, [0, 1]] >= 0).all() and (bodies[:, 2] <= 200).all() and (bodies[:, 3] <= 100).all()
    assert (bodies[:, :2] <= faces[:, :2]).all() and (bodies[:, 2:] >= faces[:, 2:]).all()


def test_degenerate_face_gives_degenerate_body():
    body = body_box_from_face(np.array([[50, 50, 50, 50]], np.float32), IMAGE_HW)
    np.testing.assert_array_equal(body, [[50, 50, 50, 50]])
