"""Weight-space interpolation of a fine-tuned model with the model it started from.

A model fine-tuned from another (``init_weights``) lies in the same basin as its start,
and the straight line between the two sets of weights is a family of models: at
``alpha`` 0 the start, at 1 the fine-tuned model, in between a model that often keeps
more of what the start knew and still carries most of what fine-tuning taught
(WiSE-FT: Wortsman et al., "Robust fine-tuning of zero-shot models", CVPR 2022).
BatchNorm running statistics are interpolated like the weights; integer buffers
(``num_batches_tracked``) are the fine-tuned model's.
"""

from __future__ import annotations

import os
from typing import Mapping

import torch

from emotion.checkpoint import load_checkpoint, save_checkpoint


def interpolate_state(start: Mapping[str, torch.Tensor], end: Mapping[str, torch.Tensor],
                      alpha: float) -> dict[str, torch.Tensor]:
    """``(1 - alpha) * start + alpha * end`` for every floating-point tensor, in float32;
    the two must hold the same names and shapes."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha}: must be in [0, 1]")
    if set(start) != set(end):
        differ = sorted(set(start) ^ set(end))
        raise ValueError(f"the two models hold different tensors: {differ[:5]}")
    out: dict[str, torch.Tensor] = {}
    for name, last in end.items():
        first = start[name]
        if first.shape != last.shape:
            raise ValueError(f"{name}: shape {tuple(first.shape)} against {tuple(last.shape)}")
        if last.is_floating_point():
            out[name] = torch.lerp(first.float(), last.float(), alpha)
        else:
            out[name] = last.clone()
    return out


def interpolate_checkpoints(start: str, end: str, alpha: float, target: str | os.PathLike) -> str:
    """Write the model at ``alpha`` between checkpoint ``start`` (a file or shipped name)
    and ``end`` (its fine-tuned descendant) to ``target``, with ``end``'s model config,
    labels and metrics and both sources' hashes; returns ``target``."""
    first, last = load_checkpoint(start), load_checkpoint(end)
    if first["model_name"] != last["model_name"] or list(first["labels"]) != list(last["labels"]):
        raise ValueError(f"{start} ({first['model_name']}, {first['labels']}) and {end} "
                         f"({last['model_name']}, {last['labels']}) are not the same network and labels")
    state = interpolate_state(first["state_dict"], last["state_dict"], alpha)
    extra = {**(last.get("extra") or {}),
             "interpolated": {"start": str(start), "start_sha256": first["sha256"], "end": str(end),
                              "end_sha256": last["sha256"], "alpha": float(alpha)}}
    return save_checkpoint(target, model_name=last["model_name"], model_cfg=last["model_cfg"], state_dict=state,
                           labels=last["labels"], epoch=last["epoch"], optimizer_state=None,
                           metrics=last["metrics"], extra=extra)
