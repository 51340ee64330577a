"""Classification losses for the four ways a label can be a target (FER+ training modes).

Labels arrive as float32 [B, K] rows (``emotion.data.records``): one-hot for ordinary
single-label data, a vote distribution or a set of acceptable classes for FER+
(``emotion.data.ferplus``). The mode says how a row is read (Barsoum et al., ICMI 2016):

================ ===================================================================
mode             loss on logits z [B, K] and target row t [B, K]
================ ===================================================================
majority         cross-entropy on argmax(t) (label smoothing applies)
probability      cross-entropy on a class drawn from t at every step (PLD)
crossentropy     cross-entropy against the distribution t itself (CEL)
multi_target     -log sum_{k: t_k > 0} softmax(z)_k: any of the classes voted for
================ ===================================================================

A NaN in a target row marks a class the row's dataset does not have (a 7-class set in
FER+'s 8 classes has no ``contempt``): that class's logit is left out of the row's
softmax, so the row says nothing about it, rather than "not this class".
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from emotion.settings import LoopSettings

TARGET_MODES: tuple[str, ...] = ("majority", "probability", "crossentropy", "multi_target")


def check_target_mode(mode: str) -> str:
    if mode not in TARGET_MODES:
        raise ValueError(f"target mode must be one of {list(TARGET_MODES)}, got {mode!r}")
    return mode


def logit_adjustment(class_prior: list[float] | None, tau: float) -> torch.Tensor | None:
    """``tau * log(prior)`` [K], added to the logits inside the training loss only (Menon
    et al., ICLR 2021, "Long-tail learning via logit adjustment"): the model then needs a
    larger margin on frequent classes, so rare classes (FER+'s contempt and disgust) are
    predicted more often at inference, where nothing is added. None when ``tau`` is 0."""
    if not tau:
        return None
    if not class_prior:
        raise ValueError("logit adjustment (train.logit_adjust_tau > 0) needs the training split's class prior")
    prior = torch.as_tensor(class_prior, dtype=torch.float32).clamp_min(1e-6)
    return float(tau) * torch.log(prior / prior.sum())


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, mode: str = "majority",
                        label_smoothing: float = 0.0, generator: torch.Generator | None = None,
                        adjustment: torch.Tensor | None = None) -> torch.Tensor:
    """Mean loss over the batch of single-label ``logits`` [B, K] against ``labels`` [B, K]
    (module doc); ``adjustment`` [K] (``logit_adjustment``) is added to the logits first."""
    check_target_mode(mode)
    logits = logits.float()
    if adjustment is not None:
        logits = logits + adjustment.to(logits.device)
    labels = labels.to(logits.dtype)
    if len(logits) == 0:
        return logits.sum() * 0.0  # keeps the graph: an empty term adds nothing
    known = ~torch.isnan(labels)
    labels = torch.nan_to_num(labels, nan=0.0)
    if not bool(known.all()):
        return _masked_loss(logits, labels, known, mode, label_smoothing, generator)
    if mode == "majority":
        return F.cross_entropy(logits, labels.argmax(dim=-1), label_smoothing=label_smoothing)
    if mode == "probability":
        return F.cross_entropy(logits, _drawn(labels, generator), label_smoothing=label_smoothing)
    log_p = F.log_softmax(logits, dim=-1)
    if mode == "crossentropy":
        target = labels / labels.sum(dim=-1, keepdim=True).clamp_min(1e-12)
        if label_smoothing:
            target = (1.0 - label_smoothing) * target + label_smoothing / target.shape[-1]
        return -(target * log_p).sum(dim=-1).mean()
    accepted = labels > 0  # multi_target
    return -torch.logsumexp(log_p.masked_fill(~accepted, float("-inf")), dim=-1).mean()


def _drawn(labels: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """A class per row drawn from its target distribution (a row without votes: uniform)."""
    weights = labels.clamp_min(0) + (labels.sum(dim=-1, keepdim=True) <= 0).to(labels.dtype)
    return torch.multinomial(weights, 1, generator=generator).squeeze(1)


def _masked_loss(logits: torch.Tensor, labels: torch.Tensor, known: torch.Tensor, mode: str,
                 label_smoothing: float, generator: torch.Generator | None) -> torch.Tensor:
    """``classification_loss`` where each row's softmax spans only its ``known`` classes:
    every mode becomes a soft cross-entropy over them (label smoothing spread over the
    known classes alone)."""
    log_p = F.log_softmax(logits.masked_fill(~known, float("-inf")), dim=-1)
    log_p = log_p.masked_fill(~known, 0.0)  # -inf * 0 would be NaN
    if mode == "majority":
        target = F.one_hot(labels.argmax(dim=-1), labels.shape[-1]).to(labels.dtype)
    elif mode == "probability":
        target = F.one_hot(_drawn(labels, generator), labels.shape[-1]).to(labels.dtype)
    elif mode == "multi_target":
        accepted = (labels > 0) & known
        return -torch.logsumexp(log_p.masked_fill(~accepted, float("-inf")), dim=-1).mean()
    else:
        target = labels / labels.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    if label_smoothing:
        count = known.sum(dim=-1, keepdim=True).clamp_min(1).to(labels.dtype)
        target = (1.0 - label_smoothing) * target + label_smoothing * known.to(labels.dtype) / count
    return -(target * log_p).sum(dim=-1).mean()


def loss_settings(settings: LoopSettings, class_prior: list[float] | None = None) -> dict[str, Any]:
    """The single-label loss keywords a criterion takes from the ``train`` settings:
    ``target_mode``, ``label_smoothing`` and the logit ``adjustment`` (from the train
    split's ``class_prior``, which the trainer measures when ``logit_adjust_tau`` > 0)."""
    return {"target_mode": settings.target_mode, "label_smoothing": settings.label_smoothing,
            "adjustment": logit_adjustment(class_prior, settings.logit_adjust_tau)}
