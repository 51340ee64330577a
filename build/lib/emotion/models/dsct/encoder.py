"""DSCT's transformer encoder: DETR's post-norm self-attention layers over the backbone's
tokens, the position encoding added to queries and keys in every layer.

forward(tokens [B, N, D], pos [1 or B, N, D]) -> memory [B, N, D]
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from emotion.models.dsct.layers import AttentionBlock, FeedForward


class EncoderLayer(nn.Module):
    """Self-attention then FFN, each post-norm residual."""

    def __init__(self, dim: int, nheads: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.self_attn = AttentionBlock(dim, nheads, dropout)
        self.ffn = FeedForward(dim, ffn_dim, dropout)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        x, _ = self.self_attn(x, pos, x, pos)
        return self.ffn(x)


class Encoder(nn.Module):
    """A stack of ``EncoderLayer``s (zero layers: the tokens pass through)."""

    def __init__(self, dim: int, nheads: int, ffn_dim: int, num_layers: int, dropout: float):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(dim, nheads, ffn_dim, dropout) for _ in range(num_layers))

    def forward(self, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            tokens = layer(tokens, pos)
        return tokens


def build_encoder(cfg: Mapping[str, Any]) -> Encoder:
    """From a resolved DSCT config (``hidden_dim``, ``nheads``, ``ffn_dim``, ``enc_layers``, ``dropout``)."""
    return Encoder(int(cfg["hidden_dim"]), int(cfg["nheads"]), int(cfg["ffn_dim"]), int(cfg["enc_layers"]),
                   float(cfg["dropout"]))
