"""Model checkpoints: one ``torch.save`` file, loadable with ``weights_only=True``.

Layout of the saved dict (only tensors, str, int, float, bool, None, lists and dicts, so
the safe unpickler accepts it):

    format_version  int (1)
    model_name      registry name, e.g. "cocoer"
    model_cfg_json  the model config as a JSON string
    labels          list[str], in score order
    state_dict      {name: tensor}
    epoch           int | None
    optimizer_state optimizer.state_dict() | None
    metrics_json    JSON string of a dict | None
    extra_json      JSON string of a dict | None

``load_checkpoint`` decodes the JSON fields back into ``model_cfg``, ``metrics`` and
``extra`` and adds ``sha256`` (of the file's bytes) and ``path``. Paths may be local or
``s3://`` URIs (through ``emotion.storage``, imported only when needed). The model a
checkpoint holds is rebuilt by ``emotion.models.loading.load_model_from_checkpoint``.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from emotion.models.protocol import plain_config
from emotion.weights import KNOWN_WEIGHTS, resolve, sha256_of

FORMAT_VERSION = 1


def _is_s3(path: str | os.PathLike) -> bool:
    return str(path).startswith("s3://")


def _dumps(value: Any) -> str | None:
    return None if value is None else json.dumps(plain_config(value), sort_keys=True)


def save_checkpoint(path_or_s3_uri: str | os.PathLike, *, model_name: str, model_cfg: Mapping[str, Any],
                    state_dict: Mapping[str, torch.Tensor], labels: Sequence[str], epoch: int | None = None,
                    optimizer_state: Mapping[str, Any] | None = None, metrics: Mapping[str, Any] | None = None,
                    extra: Mapping[str, Any] | None = None, s3: Any = None) -> str:
    """Write a checkpoint atomically through ``emotion.storage.write_bytes`` (temp file +
    rename locally; on S3 an object that appears whole or not at all); returns its location.

    The file is serialized in memory first (the tensors are in memory already, so this
    at most doubles them). Tensors are moved to the CPU first, so a checkpoint saved on a
    GPU loads anywhere. ``s3`` is an optional ``emotion.storage.S3Config`` for ``s3://``
    destinations.
    """
    payload = {
        "format_version": FORMAT_VERSION,
        "model_name": str(model_name),
        "model_cfg_json": _dumps(model_cfg),
        "labels": [str(x) for x in labels],
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
        "epoch": None if epoch is None else int(epoch),
        "optimizer_state": optimizer_state,
        "metrics_json": _dumps(metrics),
        "extra_json": _dumps(extra),
    }
    target = str(path_or_s3_uri) if _is_s3(path_or_s3_uri) else str(Path(path_or_s3_uri).expanduser())
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    from emotion import storage

    # The one atomic write: a temp file renamed into place, or one S3 upload that appears whole.
    storage.write_bytes(target, buffer.getbuffer(), s3)
    return target


def _read_local(path: Path, map_location: str | torch.device) -> dict[str, Any]:
    try:
        raw = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # corrupt, truncated, or not a torch file: say which file
        raise ValueError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(raw, dict) or "state_dict" not in raw or "model_name" not in raw:
        raise ValueError(f"{path}: not an emotion checkpoint (no model_name/state_dict)")
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format {version!r}, this code reads format {FORMAT_VERSION}")
    out = dict(raw)
    out["model_cfg"] = json.loads(raw["model_cfg_json"]) if raw.get("model_cfg_json") else {}
    out["metrics"] = json.loads(raw["metrics_json"]) if raw.get("metrics_json") else None
    out["extra"] = json.loads(raw["extra_json"]) if raw.get("extra_json") else None
    out["sha256"] = sha256_of(path)
    return out


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                    s3: Any = None) -> dict[str, Any]:
    """Read a checkpoint safely (a local path, an s3:// URI, or the name of a checkpoint
    shipped with the package in ``emotion.weights.KNOWN_WEIGHTS``, hash-checked); see the
    module doc for keys."""
    target = str(path)
    if target in KNOWN_WEIGHTS:  # a checkpoint shipped with the package: hash-checked
        out = _read_local(resolve(target), map_location)
    elif _is_s3(target):
        from emotion import storage

        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / "checkpoint.pt"
            storage.copy_to_local(target, local, s3) if s3 is not None else storage.copy_to_local(target, local)
            out = _read_local(local, map_location)
    else:
        local = Path(target).expanduser()
        if not local.is_file():
            raise FileNotFoundError(f"checkpoint not found: {local}")
        out = _read_local(local, map_location)
    out["path"] = target
    return out


def export_weights(source: str | os.PathLike, target: str | os.PathLike, *, half: bool = True,
                   model_cfg_updates: Mapping[str, Any] | None = None) -> str:
    """Write ``source``'s model as a checkpoint to ship: no optimiser state, and with
    ``half`` every floating-point tensor stored as float16 (half the bytes; the model is
    rebuilt in float32 when loaded). ``model_cfg_updates`` sets inference-time keys of the
    saved model config (e.g. QCS's ``test_flip``); the weights are the same. Returns ``target``."""
    ckpt = load_checkpoint(source)
    state = {name: tensor.half() if half and tensor.is_floating_point() else tensor
             for name, tensor in ckpt["state_dict"].items()}
    extra = {**(ckpt.get("extra") or {}), "exported_from_sha256": ckpt["sha256"],
             "stored_dtype": "float16" if half else "float32"}
    model_cfg = {**ckpt["model_cfg"], **(model_cfg_updates or {})}
    return save_checkpoint(target, model_name=ckpt["model_name"], model_cfg=model_cfg, state_dict=state,
                           labels=ckpt["labels"], epoch=ckpt["epoch"], optimizer_state=None,
                           metrics=ckpt["metrics"], extra=extra)
