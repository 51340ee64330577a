"""Backbones: shapes, strict loading of the packaged ImageNet weights, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from emotion.models.backbones import (
    BACKBONES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    EfficientNetLite0,
    MobileNetV2,
    build_backbone,
    feature_grid,
)
from emotion.weights import WeightsNotFoundError, load_torch_state

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def _imagenet_tensor(path, size: int = 224) -> torch.Tensor:
    pixels = np.array(Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR))
    x = torch.from_numpy(pixels).permute(2, 0, 1).float()[None] / 255
    return (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def _imagenet_top5(logits: torch.Tensor) -> list[str]:
    from torchvision.models import MobileNet_V2_Weights

    categories = MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"]
    return [categories[i] for i in logits[0].topk(5).indices.tolist()]


def _require(name: str):
    try:
        return load_torch_state(name)
    except WeightsNotFoundError as exc:
        pytest.skip(str(exc))


def test_registry_is_a_dict_and_unknown_names_fail_clearly():
    assert {"mobilenet_v2", "efficientnet_lite0", "resnet50", "toy"} <= set(BACKBONES)
    with pytest.raises(KeyError, match="unknown backbone 'vgg16'; known:"):
        build_backbone("vgg16")


def test_toy_backbone_shapes_and_grid_probe_keeps_batchnorm_stats():
    net, channels = build_backbone("toy", pretrained=False)
    assert channels == 32
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 32, 4, 4)
    stats = [b.clone() for b in net.buffers()]
    net.train()
    assert feature_grid(net, 64) == (8, 8)
    assert net.training and all(torch.equal(a, b) for a, b in zip(stats, net.buffers()))


def test_resnet50_needs_a_weights_path():
    with pytest.raises(ValueError, match="weights_path"):
        build_backbone("resnet50", pretrained=True)
    net, channels = build_backbone("resnet50", pretrained=False)
    assert channels == 2048 and net.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 2048, 2, 2)


def test_mobilenet_v2_loads_real_weights_strictly(sample_photos):
    _require("mobilenet_v2_imagenet")
    features, channels = build_backbone("mobilenet_v2", pretrained=True)
    features.eval()
    x = _imagenet_tensor(sample_photos["obama"])
    with torch.no_grad():
        fmap = features(torch.cat([x, x]))
    assert channels == 1280 and fmap.shape == (2, 1280, 7, 7)
    # The weights are the real ImageNet ones: the classifier on top names the suit.
    from torchvision.models import mobilenet_v2

    full = mobilenet_v2()
    full.load_state_dict(load_torch_state("mobilenet_v2_imagenet"), strict=True)
    with torch.no_grad():
        logits = full.classifier(fmap[:1].mean((2, 3)))
    assert "suit" in _imagenet_top5(logits)



def test_mobilenet_v2_written_here_is_torchvisions_network():
    """Same keys, shapes and outputs as torchvision's MobileNetV2, so its state dicts (the
    ImageNet file, face models trained with either) load unchanged."""
    from torchvision.models import mobilenet_v2

    torch.manual_seed(0)
    theirs = mobilenet_v2(weights=None).eval()
    ours = MobileNetV2().eval()
    expected = theirs.state_dict()
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [(k, v.shape) for k, v in expected.items()]
    ours.load_state_dict(expected, strict=True)
    x = torch.randn(2, 3, 80, 80)
    with torch.no_grad():
        assert torch.allclose(ours.features(x), theirs.features(x), atol=1e-5)
        assert torch.allclose(ours(x), theirs(x), atol=1e-5)
    ours.train(), theirs.train()  # training mode too (BatchNorm on batch statistics)
    assert torch.allclose(ours.features(x), theirs.features(x), atol=1e-5)

def test_efficientnet_lite0_loads_real_weights_strictly(sample_photos):
    state = _require("efficientnet_lite0_imagenet")
    net = EfficientNetLite0()
    result = net.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    features, channels = build_backbone("efficientnet_lite0", pretrained=True)
    features.eval()
    x = _imagenet_tensor(sample_photos["obama"])
    with torch.no_grad():
        fmap = features(torch.cat([x, x]))
        logits = features.net._fc(fmap[:1].mean((2, 3)))
    assert channels == 1280 and fmap.shape == (2, 1280, 7, 7)
    assert _imagenet_top5(logits)[0] == "suit"
