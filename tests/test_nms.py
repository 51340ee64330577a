"""The CPU NMS (no torchvision import) against torchvision's kernel."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torchvision

from tests.conftest import PROJECT_ROOT
from emotion.models.detection.nms import MAX_MATRIX_BOXES, batched_nms, greedy_nms, pairwise_iou

pytestmark = pytest.mark.unit


def _random_boxes(generator: torch.Generator, n: int, groups: int) -> tuple[torch.Tensor, ...]:
    # Clustered boxes, so that many pairs overlap around the threshold.
    centres = torch.rand(n, 2, generator=generator) * 40
    sizes = 5 + torch.rand(n, 2, generator=generator) * 20
    boxes = torch.cat([centres, centres + sizes], dim=1)
    scores = torch.rand(n, generator=generator)
    group = torch.randint(0, groups, (n,), generator=generator)
    return boxes, scores, group


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("iou", [0.3, 0.4, 0.7])
def test_same_kept_boxes_and_order_as_torchvision(seed: int, iou: float) -> None:
    generator = torch.Generator().manual_seed(seed)
    boxes, scores, groups = _random_boxes(generator, 200, groups=4)
    expected = torchvision.ops.batched_nms(boxes, scores, groups, iou)
    assert torch.equal(greedy_nms(boxes, scores, groups, iou), expected)
    assert torch.equal(batched_nms(boxes, scores, groups, iou), expected)


def test_groups_never_suppress_each_other() -> None:
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 3)
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert greedy_nms(boxes, scores, torch.tensor([0, 1, 0]), 0.5).tolist() == [0, 1]
    assert greedy_nms(boxes, scores, torch.tensor([0, 1, 2]), 0.5).tolist() == [0, 1, 2]


def test_iou_exactly_at_the_threshold_is_kept() -> None:
    # Overlap of half the union: IoU 0.5 exactly is not "above" 0.5.
    boxes = torch.tensor([[0.0, 0.0, 2.0, 1.0], [1.0, 0.0, 2.0, 1.0]])
    assert pairwise_iou(boxes)[0, 1].item() == 0.5
    assert greedy_nms(boxes, torch.tensor([0.9, 0.8]), torch.zeros(2, dtype=torch.int64), 0.5).tolist() == [0, 1]


def test_empty_input() -> None:
    kept = batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.4)
    assert kept.dtype == torch.int64 and kept.numel() == 0


def test_many_candidates_hand_over_to_torchvision() -> None:
    generator = torch.Generator().manual_seed(0)
    boxes, scores, groups = _random_boxes(generator, MAX_MATRIX_BOXES + 50, groups=2)
    assert torch.equal(batched_nms(boxes, scores, groups, 0.4), torchvision.ops.batched_nms(boxes, scores, groups, 0.4))


def test_the_default_tagging_models_do_not_import_torchvision() -> None:
    # torchvision's import costs every tagging actor about 1.5-2 s of CPU at start-up. The
    # models are those of the tag config's defaults (the shipped QCS ensemble) and fer.
    code = (
        "import sys\n"
        "from hydra import compose, initialize_config_dir\n"
        "from omegaconf import OmegaConf\n"
        "from emotion.models.loading import build_emotion_model\n"
        "from emotion.predictor import build_predictor\n"
        f"with initialize_config_dir(config_dir={str(PROJECT_ROOT / 'jobs' / 'configs')!r}, version_base='1.3'):\n"
        "    cfg = OmegaConf.to_container(compose(config_name='tag'), resolve=True)\n"
        "build_predictor(cfg)  # what each tagging actor builds\n"
        "model = build_emotion_model({**cfg['model'], 'device': 'cpu'})\n"
        "from emotion.models.settings import yaml_settings\n"
        "build_emotion_model({**yaml_settings('fer'), 'device': 'cpu'})\n"
        "print(model.name, 'torchvision' in sys.modules, 'emotion.models.dsct.model' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["face_ensemble", "False", "False"]
