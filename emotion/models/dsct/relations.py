"""Subject-context fusion: relation-biased attention from subject queries to context queries.

In the fused decoder layers (``fuse_from_layer`` on) each subject query gathers context
queries' features by attention whose logits carry two relation terms (the DSCT paper's
spatial relations, from box geometry, and semantic relations, from feature similarity):

* **spatial** (``SpatialRelation``): from the geometry of the subject's current reference
  box s and the context query's box c (both normalised cx, cy, w, h): offset of c's
  centre in units of s's size, log size ratios, IoU(s, c) and the fraction of c inside s
  (``box_geometry``, 6 numbers), through a small MLP to one bias per head. So a head can
  prefer cues inside the person, beside them, or the scene at large.
* **semantic** (``SemanticRelation``): per head, the cosine similarity of the projected
  subject and context features times a learned per-head scale.

``attention + spatial + semantic`` logits, softmax, values = context features; the result
is added to the subject query (post-norm residual). Context queries carry no box of
their own, so their box is where they look: ``attention_geometry`` turns a context
query's cross-attention over the memory into a box (attention-weighted mean position of
the cells, ±2 standard deviations as its extent). Both boxes are detached: geometry
steers attention, gradients do not move boxes through it.

Shapes: B batch, Qs subject queries, Qc context queries, H heads, D width.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence, get_args

import torch
import torch.nn.functional as F
from torch import nn

from emotion.models.dsct.layers import MLP, AttentionBlock
from emotion.models.settings import Relation

RELATIONS: tuple[str, ...] = get_args(Relation)
GEOMETRY_FEATURES = 6
_EPS = 1e-4


def _corners(boxes: torch.Tensor) -> torch.Tensor:
    centre, size = boxes[..., :2], boxes[..., 2:]
    return torch.cat((centre - size / 2, centre + size / 2), dim=-1)


def box_geometry(subject_boxes: torch.Tensor, context_boxes: torch.Tensor) -> torch.Tensor:
    """Pairwise relative geometry: [B, Qs, 4], [B, Qc, 4] (cx, cy, w, h) -> [B, Qs, Qc, 6]:
    (dx / w_s, dy / h_s, log(w_c / w_s), log(h_c / h_s), IoU, area(s ∩ c) / area(c)),
    clamped to [-10, 10]."""
    s, c = subject_boxes[:, :, None], context_boxes[:, None]
    sw, sh = s[..., 2].clamp(min=_EPS), s[..., 3].clamp(min=_EPS)
    cw, ch = c[..., 2].clamp(min=_EPS), c[..., 3].clamp(min=_EPS)
    sx = _corners(s)
    cx = _corners(c)
    overlap = (torch.minimum(sx[..., 2:], cx[..., 2:]) - torch.maximum(sx[..., :2], cx[..., :2])).clamp(min=0)
    inter = overlap[..., 0] * overlap[..., 1]
    union = sw * sh + cw * ch - inter
    features = torch.stack([(c[..., 0] - s[..., 0]) / sw, (c[..., 1] - s[..., 1]) / sh,
                            torch.log(cw / sw), torch.log(ch / sh), inter / union, inter / (cw * ch)], dim=-1)
    return features.clamp(-10.0, 10.0)


@torch.no_grad()
def attention_geometry(weights: torch.Tensor, centres: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
    """Where queries look, as boxes: attention [B, Q, N] over N cells with centres [N, 2]
    (x, y normalised) -> [B, Q, 4] (cx, cy, w, h); extent 4 standard deviations, at least
    one cell and at most the image."""
    weights = weights.float()
    mean = weights @ centres  # [B, Q, 2]
    var = (weights @ centres.square() - mean.square()).clamp(min=0)
    cell = centres.new_tensor([1.0 / grid_hw[1], 1.0 / grid_hw[0]])
    size = torch.maximum(4 * var.sqrt(), cell).clamp(max=1.0)
    return torch.cat((mean, size), dim=-1)


class SpatialRelation(nn.Module):
    """Box geometry -> one attention bias per head: [B, Qs, 4], [B, Qc, 4] -> [B, H, Qs, Qc]."""

    def __init__(self, nheads: int, hidden: int = 32):
        super().__init__()
        self.mlp = MLP(GEOMETRY_FEATURES, hidden, nheads, num_layers=2)

    def forward(self, subject_boxes: torch.Tensor, context_boxes: torch.Tensor) -> torch.Tensor:
        return self.mlp(box_geometry(subject_boxes, context_boxes)).permute(0, 3, 1, 2)


class SemanticRelation(nn.Module):
    """Feature similarity -> one attention bias per head: scale_h x cos(P_s s_i, P_c c_j)
    per head's slice; [B, Qs, D], [B, Qc, D] -> [B, H, Qs, Qc]."""

    def __init__(self, dim: int, nheads: int):
        super().__init__()
        self.nheads = nheads
        self.subject_proj = nn.Linear(dim, dim)
        self.context_proj = nn.Linear(dim, dim)
        self.scale = nn.Parameter(torch.ones(nheads))

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, q, d = x.shape
        return F.normalize(x.reshape(b, q, self.nheads, d // self.nheads), dim=-1).transpose(1, 2)  # [B, H, Q, d/H]

    def forward(self, subject: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        cosine = self._heads(self.subject_proj(subject)) @ self._heads(self.context_proj(context)).transpose(-1, -2)
        return cosine * self.scale.view(1, -1, 1, 1)


class SubjectContextRelation(nn.Module):
    """Subject queries attend to context queries with relation biases (module doc).

    forward(subject [B, Qs, D], subject_pos [B, Qs, D], subject_boxes [B, Qs, 4],
            context [B, Qc, D], context_pos [B, Qc, D], context_boxes [B, Qc, 4]) -> subject [B, Qs, D]
    """

    def __init__(self, dim: int, nheads: int, dropout: float, relations: Sequence[str] = RELATIONS):
        super().__init__()
        unknown = sorted(set(relations) - set(RELATIONS))
        if unknown:
            raise ValueError(f"unknown relations {unknown}; known: {list(RELATIONS)}")
        self.spatial = SpatialRelation(nheads) if "spatial" in relations else None
        self.semantic = SemanticRelation(dim, nheads) if "semantic" in relations else None
        self.attention = AttentionBlock(dim, nheads, dropout)

    def relation_bias(self, subject: torch.Tensor, subject_boxes: torch.Tensor, context: torch.Tensor,
                      context_boxes: torch.Tensor) -> torch.Tensor | None:
        """The summed relation terms [B, H, Qs, Qc], or None with no relation enabled."""
        bias = None
        if self.spatial is not None:
            bias = self.spatial(subject_boxes.detach(), context_boxes.detach())
        if self.semantic is not None:
            semantic = self.semantic(subject, context)
            bias = semantic if bias is None else bias + semantic
        return bias

    def forward(self, subject: torch.Tensor, subject_pos: torch.Tensor, subject_boxes: torch.Tensor,
                context: torch.Tensor, context_pos: torch.Tensor, context_boxes: torch.Tensor) -> torch.Tensor:
        bias = self.relation_bias(subject, subject_boxes, context, context_boxes)
        out, _ = self.attention(subject, subject_pos, context, context_pos, bias=bias)
        return out


def build_relation(cfg: Mapping[str, Any]) -> SubjectContextRelation:
    """From a resolved DSCT config (``hidden_dim``, ``nheads``, ``dropout``, ``relations``)."""
    return SubjectContextRelation(int(cfg["hidden_dim"]), int(cfg["nheads"]), float(cfg["dropout"]),
                                  tuple(cfg["relations"]))
