"""The input contract: one spec per model family, one crop function, one shrink.

Training rows for an annotated image give the same crops as tagging given the same boxes,
and a model's spec is known without building its network.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from emotion.crops import CropSpec
from emotion.models.protocol import InputSpec
from emotion.models.loading import input_spec
from emotion.models.settings import yaml_settings
from emotion.images import decode_batch
from emotion.predictor import EmotionPredictor
from emotion.training.rows import person_rows

pytestmark = pytest.mark.unit


class FixedBoxes:
    """A detector that returns given boxes (original pixels), scaled to the working image."""

    def __init__(self, boxes: np.ndarray, original_width: int):
        self.boxes, self.original_width = boxes, original_width

    def detect(self, images):
        return [{"boxes": self.boxes * (img.shape[1] / self.original_width), "scores": np.ones(len(self.boxes))}
                for img in images]


@pytest.fixture(scope="module")
def big_photo(sample_photos) -> bytes:
    """A real photo enlarged past the shrink limit, so both paths must shrink it."""
    img = Image.open(sample_photos["obama"]).convert("RGB")
    img = img.resize((img.width * 3, img.height * 3))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=92)
    return buf.getvalue()


@pytest.mark.parametrize("max_side", [960, 500])
def test_training_rows_cut_the_crops_tagging_cuts(big_photo, max_side):
    width, height = Image.open(io.BytesIO(big_photo)).size
    faces = np.array([[0.40 * width, 0.20 * height, 0.55 * width, 0.45 * height],
                      [0.10 * width, 0.30 * height, 0.22 * width, 0.50 * height]], np.float32)
    spec = CropSpec(levels=("head", "body", "context"), size=48, head_expand=1.25, max_side=max_side)
    model_spec = InputSpec(name="m", levels=spec.levels, input_size=48, labels=("a", "b", "c"), multi_label=False,
                           model_id="m@sha256:0")
    predictor = EmotionPredictor(FixedBoxes(faces, width), None, spec=model_spec, crop=spec, threshold=0.5,
                                 max_people=20, person_threshold=None)
    people = predictor.detect(decode_batch(["p.jpg"], [big_photo], max_side, 64_000_000))
    rows = person_rows([{"image_uri": "p.jpg", "image_bytes": big_photo, "labels": np.eye(2, 3),
                         "face_boxes": faces, "person_boxes": np.full((2, 4), np.nan)}], spec,
                       num_labels=3, multi_label=False)
    for level in spec.levels:
        assert rows[f"crop_{level}"].shape == (2, 48, 48, 3)
        np.testing.assert_array_equal(rows[f"crop_{level}"], people[f"crop_{level}"], err_msg=level)
    # Boxes come back in original pixels whatever the shrink.
    np.testing.assert_allclose(people["face_box"], faces, rtol=1e-5, atol=1e-3)
    assert list(people["image_index"]) == [0, 0] and list(people["rows_in_image"]) == [2, 2]


def test_specs_come_from_config_without_building_a_network(monkeypatch):
    import torch

    built = []
    monkeypatch.setattr(torch.nn.Module, "__init__", lambda *a, **k: built.append(a) or None)
    fer = input_spec(yaml_settings("fer"))
    cnn = input_spec({**yaml_settings("face_cnn"), "labels": ["a", "b"], "input_size": 96})
    cocoer = input_spec({**yaml_settings("cocoer"), "checkpoint": None, "labels": ["x", "y", "z"], "input_size": 112})
    assert not built
    assert fer.levels == ("head",) and len(fer.labels) == 7 and fer.model_id.startswith("fer@sha256:")
    assert (cnn.input_size, cnn.labels, cnn.multi_label) == (96, ("a", "b"), False)
    assert cocoer.levels == ("head", "body", "context") and cocoer.multi_label and cocoer.input_size == 112


def test_a_model_fills_its_own_output_columns():
    from emotion.models.registry import build_model
    from emotion.models.settings import yaml_config

    cocoer = build_model("cocoer", yaml_config("cocoer", dict(
        labels=["a", "b"], backbone="toy", vocab_backbone="toy", pretrained=False, input_size=32, d_h=16, d=16,
        n_blocks=1, n_heads=2, d_ff=32)))
    crops = {level: np.zeros((3, 32, 32, 3), np.uint8) for level in cocoer.input_levels}
    columns = cocoer.output_columns(cocoer.predict(crops))
    assert set(columns["level_scores"]) == {"head", "body", "context", "vocabulary"}
    assert columns["scores"].shape == (3, 2) and columns["refined"].shape == (3,)
    assert all(set(names) <= {"head", "body", "context"} for names in columns["dropped_levels"])


def test_input_spec_refuses_unknown_levels():
    with pytest.raises(ValueError, match="subset of"):
        InputSpec(name="m", levels=("face",), input_size=32, labels=("a",), multi_label=False, model_id="m")
