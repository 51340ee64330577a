"""Load the arrays of a Keras 2 HDF5 model file into a PyTorch module, with h5py only.

No TensorFlow or Keras is needed: the file's ``model_config`` attribute (JSON) says what
each layer is, and ``model_weights/<layer>/`` holds its arrays. The PyTorch model names
the Keras layer behind each of its modules with a ``keras_layers()`` method returning
``{keras_layer_name: module}``; this loader checks every pairing (layer type, kernel
size, stride, filters, bias, BatchNorm epsilon, array shapes) and copies the arrays,
converting Keras' channels-last layouts to PyTorch's:

================== ===================================== ==============================
Keras layer        Keras arrays                          PyTorch module
================== ===================================== ==============================
Conv2D             kernel (H, W, in, out), bias (out,)   ``nn.Conv2d``: weight (out, in, H, W)
SeparableConv2D    depthwise_kernel (H, W, in, m),       any module with ``depthwise`` and
                   pointwise_kernel (1, 1, in*m, out)    ``pointwise`` ``nn.Conv2d`` children
BatchNormalization gamma, beta, moving_mean,             ``nn.BatchNorm2d`` (eps must equal
                   moving_variance                       Keras' epsilon, often 1e-3)
Dense              kernel (in, out), bias (out,)         ``nn.Linear``: weight (out, in)
================== ===================================== ==============================

Padding is not a module attribute here: Keras 'same' padding must be applied by the
model itself (see ``mini_xception.TFSamePad``); the loader only insists that the
convolution does no padding of its own.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    import h5py


class KerasWeightsError(ValueError):
    """A Keras HDF5 file does not fit the PyTorch model it is loaded into."""


def _open_hdf5(path: str | os.PathLike) -> h5py.File:
    """Open ``path`` read-only. h5py is imported here, not with this module: only the
    fer mini-Xception's weights are HDF5, and a host that runs other models (a bare CUDA
    host with torch, torchvision and pyarrow) need not have it."""
    try:
        import h5py
    except ImportError as error:
        raise ImportError(f"reading the Keras HDF5 weights {os.fspath(path)} needs h5py "
                          "(pip install h5py); only model=fer uses them") from error
    return h5py.File(path, "r")


def _decode(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, (bytes, np.bytes_)) else str(value)


def read_keras_layer_configs(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Return ``{layer_name: {"class_name": ..., "config": {...}}}`` from ``model_config``.

    Empty when the file holds weights only (``model.save_weights``), which has no config.
    """
    with _open_hdf5(path) as f:
        return _layer_configs(f)


def _layer_configs(f: h5py.File) -> dict[str, dict[str, Any]]:
    if "model_config" not in f.attrs:
        return {}
    model_config = json.loads(_decode(f.attrs["model_config"]))
    layers = model_config["config"]
    if isinstance(layers, Mapping):  # functional Model; a Keras 2.0 Sequential is a bare list
        layers = layers["layers"]
    return {
        layer["config"]["name"]: {"class_name": layer["class_name"], "config": layer["config"]}
        for layer in layers
    }


def _layer_arrays(group: h5py.Group) -> dict[str, np.ndarray]:
    """Arrays of one layer keyed by short name: 'kernel', 'bias', 'gamma', ..."""
    arrays = {}
    for weight_name in group.attrs.get("weight_names", []):
        weight_name = _decode(weight_name)
        short = weight_name.rsplit("/", 1)[-1].split(":", 1)[0]
        arrays[short] = np.asarray(group[weight_name])
    return arrays


def _pair(value: Any) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def _expect(condition: bool, layer: str, message: str) -> None:
    if not condition:
        raise KerasWeightsError(f"Keras layer {layer!r}: {message}")


def _check_conv_config(layer: str, conv: nn.Conv2d, config: Mapping[str, Any], filters: int) -> None:
    _expect(_pair(config["kernel_size"]) == tuple(conv.kernel_size), layer,
            f"kernel_size {config['kernel_size']} in the file, {tuple(conv.kernel_size)} in the model")
    _expect(_pair(config["strides"]) == tuple(conv.stride), layer,
            f"strides {config['strides']} in the file, {tuple(conv.stride)} in the model")
    _expect(_pair(config.get("dilation_rate", 1)) == tuple(conv.dilation), layer,
            f"dilation_rate {config.get('dilation_rate')} in the file, {tuple(conv.dilation)} in the model")
    _expect(config["filters"] == filters, layer,
            f"{config['filters']} filters in the file, {filters} in the model")
    _expect(bool(config.get("use_bias", True)) == (conv.bias is not None), layer,
            f"use_bias={config.get('use_bias')} in the file, bias={conv.bias is not None} in the model")
    _expect(config.get("activation", "linear") == "linear", layer,
            f"fused activation {config.get('activation')!r} is not supported; use a separate module")


def _check_no_padding(layer: str, conv: nn.Conv2d) -> None:
    _expect(conv.padding in ((0, 0), "valid"), layer,
            f"the model's Conv2d pads by {conv.padding}; Keras padding must be applied by the model "
            "(e.g. TFSamePad), not by the convolution")


def _copy(layer: str, name: str, target: torch.Tensor | None, value: np.ndarray) -> None:
    _expect(target is not None, layer, f"the file has {name!r} but the model's module has no such tensor")
    _expect(tuple(target.shape) == value.shape, layer,
            f"{name!r} has shape {value.shape} after conversion, the model expects {tuple(target.shape)}")
    with torch.no_grad():
        target.copy_(torch.from_numpy(np.ascontiguousarray(value)))


def _take(layer: str, arrays: dict[str, np.ndarray], name: str) -> np.ndarray:
    _expect(name in arrays, layer, f"missing array {name!r} (the file has {sorted(arrays)})")
    return arrays[name]


def _load_conv2d(layer: str, module: nn.Module, arrays: dict[str, np.ndarray], config: Mapping | None) -> None:
    _expect(isinstance(module, nn.Conv2d), layer, f"is Conv2D, the model has {type(module).__name__}")
    _check_no_padding(layer, module)
    if config is not None:
        _check_conv_config(layer, module, config, module.out_channels)
    _copy(layer, "kernel", module.weight, _take(layer, arrays, "kernel").transpose(3, 2, 0, 1))  # HWIO->OIHW
    if "bias" in arrays or module.bias is not None:
        _copy(layer, "bias", module.bias, _take(layer, arrays, "bias"))


def _load_separable_conv2d(layer: str, module: nn.Module, arrays: dict[str, np.ndarray],
                           config: Mapping | None) -> None:
    depthwise, pointwise = getattr(module, "depthwise", None), getattr(module, "pointwise", None)
    _expect(isinstance(depthwise, nn.Conv2d) and isinstance(pointwise, nn.Conv2d), layer,
            f"is SeparableConv2D; the model's {type(module).__name__} needs `depthwise` and `pointwise` Conv2d children")
    _expect(depthwise.groups == depthwise.in_channels, layer, "the model's depthwise conv is not grouped per channel")
    _check_no_padding(layer, depthwise)
    if config is not None:
        _check_conv_config(layer, depthwise, {**config, "use_bias": False}, pointwise.out_channels)
        _expect(bool(config.get("use_bias", True)) == (pointwise.bias is not None), layer,
                f"use_bias={config.get('use_bias')} in the file, pointwise bias={pointwise.bias is not None} in the model")
    # (H, W, in, m) -> (in*m, 1, H, W): output channel c*m + j reads input channel c, as in Keras.
    depth_kernel = _take(layer, arrays, "depthwise_kernel")
    height, width, channels, multiplier = depth_kernel.shape
    depth_kernel = depth_kernel.reshape(height, width, channels * multiplier).transpose(2, 0, 1)[:, None]
    _copy(layer, "depthwise_kernel", depthwise.weight, depth_kernel)
    _copy(layer, "pointwise_kernel", pointwise.weight, _take(layer, arrays, "pointwise_kernel").transpose(3, 2, 0, 1))
    if "bias" in arrays or pointwise.bias is not None:
        _copy(layer, "bias", pointwise.bias, _take(layer, arrays, "bias"))


def _load_batch_norm(layer: str, module: nn.Module, arrays: dict[str, np.ndarray], config: Mapping | None) -> None:
    _expect(isinstance(module, nn.BatchNorm2d), layer, f"is BatchNormalization, the model has {type(module).__name__}")
    if config is not None:
        _expect(abs(float(config["epsilon"]) - module.eps) < 1e-12, layer,
                f"epsilon {config['epsilon']} in the file, {module.eps} in the model")
        _expect(config.get("axis", -1) in (-1, 3), layer,
                f"normalises axis {config.get('axis')}; only channels-last (axis -1) maps to BatchNorm2d")
    # A Keras BN with scale=False / center=False stores no gamma / beta: those are 1 / 0.
    gamma = arrays.get("gamma", np.ones(module.num_features, np.float32))
    beta = arrays.get("beta", np.zeros(module.num_features, np.float32))
    _copy(layer, "gamma", module.weight, gamma)
    _copy(layer, "beta", module.bias, beta)
    _copy(layer, "moving_mean", module.running_mean, _take(layer, arrays, "moving_mean"))
    _copy(layer, "moving_variance", module.running_var, _take(layer, arrays, "moving_variance"))


def _load_dense(layer: str, module: nn.Module, arrays: dict[str, np.ndarray], config: Mapping | None) -> None:
    _expect(isinstance(module, nn.Linear), layer, f"is Dense, the model has {type(module).__name__}")
    _copy(layer, "kernel", module.weight, _take(layer, arrays, "kernel").T)
    if "bias" in arrays or module.bias is not None:
        _copy(layer, "bias", module.bias, _take(layer, arrays, "bias"))


_LOADERS: dict[str, Callable[[str, nn.Module, dict[str, np.ndarray], Mapping | None], None]] = {
    "Conv2D": _load_conv2d,
    "SeparableConv2D": _load_separable_conv2d,
    "BatchNormalization": _load_batch_norm,
    "Dense": _load_dense,
}


def _guess_class_name(arrays: Mapping[str, np.ndarray]) -> str | None:
    """The Keras class of a layer from its arrays alone (files without model_config)."""
    if "depthwise_kernel" in arrays:
        return "SeparableConv2D"
    if "moving_mean" in arrays:
        return "BatchNormalization"
    kernel = arrays.get("kernel")
    if kernel is not None:
        return {4: "Conv2D", 2: "Dense"}.get(kernel.ndim)
    return None


def load_keras_hdf5(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Copy every weighted layer of the Keras HDF5 file ``path`` into ``model``, in place.

    ``model.keras_layers()`` must return ``{keras_layer_name: module}``. Every layer of
    the file that has arrays must be claimed by the model and vice versa; anything that
    does not match raises ``KerasWeightsError`` naming the layer and what differs.
    Returns ``model`` for chaining.
    """
    if not hasattr(model, "keras_layers"):
        raise TypeError(f"{type(model).__name__} has no keras_layers() method naming the Keras layer of each module")
    layer_map: Mapping[str, nn.Module] = model.keras_layers()
    with _open_hdf5(path) as f:
        configs = _layer_configs(f)
        root = f["model_weights"] if "model_weights" in f else f
        file_layers = [_decode(name) for name in root.attrs.get("layer_names", list(root.keys()))]
        weighted = {name: _layer_arrays(root[name]) for name in file_layers if name in root}
        weighted = {name: arrays for name, arrays in weighted.items() if arrays}

        missing = [name for name in layer_map if name not in weighted]
        unclaimed = [name for name in weighted if name not in layer_map]
        if missing or unclaimed:
            raise KerasWeightsError(
                f"{path}: layers the model expects but the file lacks (or has no arrays for): {missing}; "
                f"layers with arrays in the file that the model does not use: {unclaimed}"
            )
        for name, module in layer_map.items():
            arrays = weighted[name]
            entry = configs.get(name)
            class_name = entry["class_name"] if entry else _guess_class_name(arrays)
            if class_name not in _LOADERS:
                raise KerasWeightsError(f"Keras layer {name!r}: class {class_name!r} is not supported "
                                        f"(supported: {sorted(_LOADERS)})")
            _LOADERS[class_name](name, module, arrays, entry["config"] if entry else None)
    return model
