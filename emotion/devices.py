"""Where networks run: a configured device (``"auto"`` or a torch device name) resolved
on this machine, and the device a built detector or model is on."""

from __future__ import annotations

from typing import Any


def cuda_available() -> bool:
    """Whether this machine has a CUDA device torch can use."""
    import torch

    return torch.cuda.is_available()


def resolve_device(device: str | None) -> str:
    """``"auto"`` (or None): ``"cuda"`` when this machine has a CUDA device, else ``"cpu"``;
    any other value as given."""
    if device in (None, "auto"):
        return "cuda" if cuda_available() else "cpu"
    return str(device)


def device_of(obj: Any) -> str | None:
    """Where a detector or model runs ("cuda:0", "cpu"), or None for one without a
    network (the full-frame detector) or no object at all."""
    if obj is None:
        return None
    device = getattr(obj, "device", None)
    if device is not None:
        return str(device)
    parameters = getattr(obj, "parameters", None)
    if callable(parameters):
        for parameter in parameters():
            return str(parameter.device)
    return None
