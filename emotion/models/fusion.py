"""Batch norms folded into the convolutions before them, for inference.

At inference a batch norm is a fixed per-channel scale and shift, so the convolution
before it can take both into its own weights and bias: one pass over the activations
instead of two, the same outputs within float rounding. MobileNetV2 (the face models'
backbone) and RetinaFace's MobileNet-0.25 hold most of their batch norms right after a
convolution in an ``nn.Sequential`` (torchvision's ``Conv2dNormActivation``, RetinaFace's
``conv_bn``). Folded, the default face model reads 13 % more faces per second on this CPU;
the face finder, whose time goes mostly to its convolutions on a 320 px canvas, is level
within noise (benchmarks/README.md, "Batch norms folded").

Only networks that never train again are folded: the predictor's emotion model and the
detectors. Training, checkpoints and exports keep their batch norms.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def fold_batch_norms(module: nn.Module) -> int:
    """In place, on a network in eval mode: every ``BatchNorm2d`` that directly follows a
    ``Conv2d`` in an ``nn.Sequential`` goes into that convolution's weights and bias and is
    replaced by ``nn.Identity``; each convolution keeps its memory format. Returns how many
    were folded."""
    if module.training:
        raise ValueError("fold_batch_norms needs a network in eval mode (its running statistics)")
    return _fold(module)


def _fold(module: nn.Module) -> int:
    folded = 0
    if isinstance(module, nn.Sequential):
        names = list(module._modules)
        for first, second in zip(names, names[1:]):
            conv, norm = module._modules[first], module._modules[second]
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d) and norm.track_running_stats:
                module._modules[first] = _folded(conv, norm)
                module._modules[second] = nn.Identity().eval()
                folded += 1
    return folded + sum(_fold(child) for child in module.children())


def _folded(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> nn.Conv2d:
    fused = fuse_conv_bn_eval(conv, norm)
    if conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous():
        fused = fused.to(memory_format=torch.channels_last)
    return fused.requires_grad_(conv.weight.requires_grad)
