"""DSCT's decoder: subject queries and context queries, decoupled then fused.

Every layer has two streams:

* **context stream** (``ContextLayer``): context queries' self-attention, cross-attention
  to the encoder memory (in every layer), FFN. Their cross-attention weights give each
  context query a box: where it looks (``relations.attention_geometry``).
* **subject stream** (``SubjectLayer``): subject queries' self-attention, then, in a
  fused layer only, relation-biased attention to the context queries of this layer
  (``relations.SubjectContextRelation``), then cross-attention to the memory, FFN.

Layers ``< fuse_from_layer`` are decoupled (the streams never meet); layers
``>= fuse_from_layer`` are fused. In a fused layer the context stream runs first, so
subjects read this layer's context features.

Subject queries carry a reference box (DAB-DETR / Deformable DETR box refinement): a
learned anchor per query to start, then each layer's predicted box, detached. The query's
positional part is ``MLP(sine(box))``, in the same sine space as the memory's cells, and
the box head predicts an offset in logit space: ``box_l = sigmoid(box_head(h_l) +
logit(box_{l-1}))``. Context queries have learned content and position embeddings.

forward -> dict:
  * ``hidden`` [L, B, Qs, D]: normalised subject features per layer (L = dec_layers);
  * ``boxes`` [L, B, Qs, 4]: cx, cy, w, h in [0, 1] per layer;
  * ``context`` [B, Qc, D]: the last layer's context features;
  * ``context_boxes`` [B, Qc, 4]: where the context queries looked in the last layer.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from emotion.models.dsct.layers import MLP, AttentionBlock, FeedForward
from emotion.models.dsct.position_encoding import box_position, grid_centres
from emotion.models.dsct.relations import SubjectContextRelation, attention_geometry, build_relation


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


class ContextLayer(nn.Module):
    """Context stream of one layer: -> (context [B, Qc, D], memory attention [B, Qc, N])."""

    def __init__(self, dim: int, nheads: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.self_attn = AttentionBlock(dim, nheads, dropout)
        self.cross_attn = AttentionBlock(dim, nheads, dropout)
        self.ffn = FeedForward(dim, ffn_dim, dropout)

    def forward(self, context: torch.Tensor, context_pos: torch.Tensor, memory: torch.Tensor,
                memory_pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        context, _ = self.self_attn(context, context_pos, context, context_pos)
        context, weights = self.cross_attn(context, context_pos, memory, memory_pos, need_weights=True)
        return self.ffn(context), weights


class SubjectLayer(nn.Module):
    """Subject stream of one layer; ``relation`` set makes it a fused layer."""

    def __init__(self, dim: int, nheads: int, ffn_dim: int, dropout: float,
                 relation: SubjectContextRelation | None):
        super().__init__()
        self.self_attn = AttentionBlock(dim, nheads, dropout)
        self.relation = relation
        self.cross_attn = AttentionBlock(dim, nheads, dropout)
        self.ffn = FeedForward(dim, ffn_dim, dropout)

    def forward(self, subject: torch.Tensor, subject_pos: torch.Tensor, subject_boxes: torch.Tensor,
                memory: torch.Tensor, memory_pos: torch.Tensor, context: torch.Tensor, context_pos: torch.Tensor,
                context_boxes: torch.Tensor) -> torch.Tensor:
        subject, _ = self.self_attn(subject, subject_pos, subject, subject_pos)
        if self.relation is not None:
            subject = self.relation(subject, subject_pos, subject_boxes, context, context_pos, context_boxes)
        subject, _ = self.cross_attn(subject, subject_pos, memory, memory_pos)
        return self.ffn(subject)


class DecoderLayer(nn.Module):
    """One decoder layer: a context stream and a subject stream (fused or not)."""

    def __init__(self, cfg: Mapping[str, Any], fused: bool):
        super().__init__()
        dim, nheads, ffn_dim, dropout = (int(cfg["hidden_dim"]), int(cfg["nheads"]), int(cfg["ffn_dim"]),
                                         float(cfg["dropout"]))
        self.fused = fused
        self.context = ContextLayer(dim, nheads, ffn_dim, dropout)
        self.subject = SubjectLayer(dim, nheads, ffn_dim, dropout, build_relation(cfg) if fused else None)


class Decoder(nn.Module):
    """Decoupled-then-fused decoder with iterative subject box refinement (module doc)."""

    def __init__(self, cfg: Mapping[str, Any]):
        super().__init__()
        dim, layers, fuse_from = int(cfg["hidden_dim"]), int(cfg["dec_layers"]), int(cfg["fuse_from_layer"])
        self.dim = dim
        self.layers = nn.ModuleList(DecoderLayer(cfg, fused=i >= fuse_from) for i in range(layers))
        self.ref_point_head = MLP(2 * dim, dim, dim, num_layers=2)  # sine(box) -> query position
        self.box_head = MLP(dim, dim, 4, num_layers=3)  # shared by every layer
        self.norm = nn.LayerNorm(dim)
        nn.init.zeros_(self.box_head.layers[-1].weight)
        nn.init.zeros_(self.box_head.layers[-1].bias)

    def forward(self, subject: torch.Tensor, anchors: torch.Tensor, context: torch.Tensor, context_pos: torch.Tensor,
                memory: torch.Tensor, memory_pos: torch.Tensor, grid_hw: tuple[int, int]) -> dict[str, torch.Tensor]:
        """subject [B, Qs, D], anchors [B, Qs, 4] (cx, cy, w, h in (0, 1)), context and
        context_pos [B, Qc, D], memory [B, N, D], memory_pos [1 or B, N, D]; ``grid_hw``
        the memory's (h, w) with N = h * w."""
        centres = grid_centres(*grid_hw, device=memory.device)
        boxes = anchors
        hidden_per_layer, boxes_per_layer = [], []
        context_boxes = None
        for layer in self.layers:
            context, weights = layer.context(context, context_pos, memory, memory_pos)
            context_boxes = attention_geometry(weights, centres, grid_hw)
            subject_pos = self.ref_point_head(box_position(boxes, self.dim))
            subject = layer.subject(subject, subject_pos, boxes, memory, memory_pos, context, context_pos,
                                    context_boxes)
            hidden = self.norm(subject)
            new_boxes = torch.sigmoid(self.box_head(hidden) + inverse_sigmoid(boxes))
            hidden_per_layer.append(hidden)
            boxes_per_layer.append(new_boxes)
            boxes = new_boxes.detach()
        return {"hidden": torch.stack(hidden_per_layer), "boxes": torch.stack(boxes_per_layer),
                "context": context, "context_boxes": context_boxes}


def build_decoder(cfg: Mapping[str, Any]) -> Decoder:
    """From a resolved DSCT config (``hidden_dim``, ``nheads``, ``ffn_dim``, ``dropout``,
    ``dec_layers``, ``fuse_from_layer``, ``relations``)."""
    return Decoder(cfg)
