"""``predictor.precision``: the arithmetic the detector and the emotion model run in.

* ``fp32`` (the default): no autocast; the reference results;
* ``fp16``: ``torch.autocast`` with float16, on CUDA only: a CPU device is refused with
  an error naming the key (CPU float16 kernels are slow or missing, so a silent fall
  back to fp32 would hide a config that does not do what it says);
* ``bf16``: ``torch.autocast`` with bfloat16, on CUDA or CPU.

Autocast covers a network's forward; the detector casts its raw outputs back to float32
before decoding boxes and NMS (``FaceDetector.forward``), and a model's ``predict``
returns float32 numpy arrays (the fer model's softmax runs on float32 logits).
"""

from __future__ import annotations

import contextlib
from typing import Any

PRECISIONS = ("fp32", "fp16", "bf16")


def check_precision(precision: str, device: Any, what: str = "the model") -> str:
    """``precision`` if ``device`` can run it, else ``ValueError`` naming the config key."""
    if precision not in PRECISIONS:
        raise ValueError(f"predictor.precision={precision!r} is not one of {list(PRECISIONS)}")
    if precision == "fp16" and _device_type(device) != "cuda":
        raise ValueError(f"predictor.precision='fp16' needs CUDA, but {what} runs on {device}; "
                         "use predictor.precision=fp32 or bf16 (bf16 also runs on CPU)")
    return precision


def autocast(device: Any, precision: str) -> contextlib.AbstractContextManager:
    """The autocast region for a forward on ``device`` (a no-op for fp32 or no device)."""
    if precision == "fp32" or device is None:
        return contextlib.nullcontext()
    import torch

    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device_type=_device_type(device), dtype=dtype)


def _device_type(device: Any) -> str:
    text = str(getattr(device, "type", device))
    return text.split(":", 1)[0]
