"""Training losses, DETR-style: one ``loss_<term>`` method per term, weights in ``weight_dict``.

``CocoERCriterion`` (the CocoER paper's training recipe): the public code trains with

    0.2 x (fused + head + body + context + vocabulary classification losses)
    + 0.1 x gradient distance

Classification loss: binary cross-entropy with logits averaged over classes and samples
(multi-label, e.g. EMOTIC) or cross-entropy (single-label; targets may be class indices
or one-hot / soft rows). Every classification term is against the ground truth:

* ``loss_head``, ``loss_body``, ``loss_context``: each level's own (unrefined) head;
* ``loss_vocab``: the vocabulary branch's y_t (only FFN_1 trains there);
* ``loss_fused``: the global classifier over the refined levels.

(In the public code the three level terms are recorded as detached numbers, so they do not
train; here they do, as the method describes a supervised prediction per level.)

``loss_grad_distance``: the mean over samples of ||δ_l||_F, the Frobenius norm of the
accumulated workspace direction δ_l = -Gᵀα (weight and bias columns together), the
quantity the public code calls ``grad_distance`` (there the sum of the norms of its weight
and bias parts, computed in numpy, so it gave no gradient). Here it is differentiable
through every level's residual (p_m - y_t) and hidden vector h_m: it is small when the
levels already agree with the pseudo label, so minimising it pulls the levels into
agreement with the vocabulary branch and with one another, and keeps the coordination
step (θ̃ = θ + η δ_l) small. It is zero when the workspace is off.

``forward`` returns every term (unweighted) plus ``loss``: Σ weight_dict[t] x term.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_WEIGHTS: dict[str, float] = {
    "loss_fused": 0.2,
    "loss_head": 0.2,
    "loss_body": 0.2,
    "loss_context": 0.2,
    "loss_vocab": 0.2,
    "loss_grad_distance": 0.1,
}


def classification_loss(logits: torch.Tensor, targets: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """BCE-with-logits (mean) for multi-label [B, K] 0/1 targets; cross-entropy for
    single-label targets given as indices [B] or probability rows [B, K]."""
    if multi_label:
        if targets.shape != logits.shape:
            raise ValueError(f"multi-label targets must be [B, K] = {list(logits.shape)}, got {list(targets.shape)}")
        return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype))
    if targets.dim() == 1:
        return F.cross_entropy(logits, targets.long())
    if targets.shape != logits.shape:
        raise ValueError(f"single-label targets must be [B] indices or [B, K] rows, got {list(targets.shape)}")
    return F.cross_entropy(logits, targets.to(logits.dtype))


class CocoERCriterion(nn.Module):
    """Losses of the CocoER outputs (see ``CocoER.forward``) against ground truth.

    Args:
        multi_label: sigmoid/BCE (True) or softmax/CE (False).
        weight_dict: term -> weight; missing terms take ``DEFAULT_WEIGHTS``; a weight of 0
            still computes the term (for logging).
    """

    def __init__(self, multi_label: bool, weight_dict: Mapping[str, float] | None = None):
        super().__init__()
        self.multi_label = bool(multi_label)
        unknown = sorted(set(weight_dict or {}) - set(DEFAULT_WEIGHTS))
        if unknown:
            raise ValueError(f"unknown loss terms {unknown}; known: {sorted(DEFAULT_WEIGHTS)}")
        self.weight_dict = {**DEFAULT_WEIGHTS, **{k: float(v) for k, v in (weight_dict or {}).items()}}

    def _cls(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return classification_loss(logits, targets, self.multi_label)

    def loss_fused(self, outputs: Mapping[str, Any], targets: torch.Tensor) -> torch.Tensor:
        return self._cls(outputs["logits"], targets)

    def loss_head(self, outputs: Mapping[str, Any], targets: torch.Tensor) -> torch.Tensor:
        return self._cls(outputs["level_logits"]["head"], targets)

    def loss_body(self, outputs: Mapping[str, Any], targets: torch.Tensor) -> torch.Tensor:
        return self._cls(outputs["level_logits"]["body"], targets)

    def loss_context(self, outputs: Mapping[str, Any], targets: torch.Tensor) -> torch.Tensor:
        return self._cls(outputs["level_logits"]["context"], targets)

    def loss_vocab(self, outputs: Mapping[str, Any], targets: torch.Tensor) -> torch.Tensor:
        return self._cls(outputs["vocab_logits"], targets)

    def loss_grad_distance(self, outputs: Mapping[str, Any], targets: torch.Tensor) -> torch.Tensor:
        del targets  # measured against the pseudo label, inside the model
        return outputs["grad_distance"].mean()

    def forward(self, outputs: Mapping[str, Any], targets: torch.Tensor) -> dict[str, torch.Tensor]:
        losses = {term: getattr(self, term)(outputs, targets) for term in self.weight_dict}
        losses["loss"] = sum(self.weight_dict[t] * losses[t] for t in self.weight_dict)
        return losses

