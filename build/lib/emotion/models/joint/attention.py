"""Hierarchical feature extraction: patch tokens, cross-level attention, pooled level vectors.

Steps 1-2 of the pipeline in ``cocoer.py``. For level m and the context tokens ū_c (N x d_h):

    Q = ū_m W0,  K = ū_c Wc,  V = ū_m W1          (V from the level itself, as written)
    γ = softmax(Q Kᵀ / √d_k)   per head (d_k = d_h / n_heads)
    z̄_m = γ V,  ż_m = z̄_m + ū_m,  z_m = FFN(LN(ż_m)) + ż_m

Head and body attend to the context this way; the context level uses self-attention
(Q, K and V all from the context stream). Blocks stack ``n_blocks`` deep (paper: 3 blocks,
4 heads, d_h 256). In every block the keys of the head/body streams come from ū_c, the
projected context patches, as in the formula (and in the public code, whose head/body
encoders read the context tokens from before its self-attention).

Because γ is N_m x N_c and multiplies V (N_m rows), the level and the context must have
the same number of patches; all levels are resized to one ``input_size``, so with equal
backbone strides they do.

Choices the formula leaves open, made here: W0/Wc/W1 have no bias (the formula has
none); heads are concatenated with no output projection (γV has no W_o); the softmax is
scaled inside (the review's "softmax(QKᵀ)/√d_h" places the scale outside, a typo the
public code does not follow); learned positional embeddings are added to the patch
tokens (the public code uses them too); the FFN is Linear-GELU-Dropout-Linear of width
``d_ff``.
"""

from __future__ import annotations

import math
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn


class PatchEmbedding(nn.Module):
    """Feature map [B, C, h, w] -> tokens [B, h*w, d_h]: flatten (1x1 patches), project
    linearly (E_m), add a learned positional embedding."""

    def __init__(self, in_channels: int, d_h: int, n_tokens: int):
        super().__init__()
        self.proj = nn.Linear(in_channels, d_h)
        self.pos = nn.Parameter(torch.zeros(1, n_tokens, d_h))
        nn.init.normal_(self.pos, std=0.02)

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        tokens = feature_map.flatten(2).transpose(1, 2)
        if tokens.shape[1] != self.pos.shape[1]:
            raise ValueError(
                f"feature map has {tokens.shape[1]} patches, the model was built for {self.pos.shape[1]}: "
                "crops must have the model's input_size"
            )
        return self.proj(tokens) + self.pos


class CrossLevelAttention(nn.Module):
    """One block T_{m,c}: multi-head attention with Q, V from the level and K from the
    context, residual, then FFN(LN(.)) + residual."""

    def __init__(self, d_h: int, n_heads: int, d_ff: int, dropout: float = 0.0):
        super().__init__()
        if d_h % n_heads:
            raise ValueError(f"d_h ({d_h}) must be divisible by n_heads ({n_heads})")
        self.n_heads = n_heads
        self.w_query = nn.Linear(d_h, d_h, bias=False)  # W0
        self.w_key = nn.Linear(d_h, d_h, bias=False)  # Wc
        self.w_value = nn.Linear(d_h, d_h, bias=False)  # W1
        self.attn_dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d_h)
        self.ffn = nn.Sequential(nn.Linear(d_h, d_ff), nn.GELU(), nn.Dropout(dropout), nn.Linear(d_ff, d_h))
        self.ffn_dropout = nn.Dropout(dropout)

    def forward(self, level: torch.Tensor, context: torch.Tensor) -> dict[str, torch.Tensor]:
        """level, context: [B, N, d_h] -> ``tokens`` [B, N, d_h], ``attention`` [B, H, N, N]."""
        if level.shape != context.shape:
            raise ValueError(f"level tokens {tuple(level.shape)} and context tokens {tuple(context.shape)} "
                             "must have the same shape (same patch count and width)")
        b, n, d = level.shape
        h, dk = self.n_heads, d // self.n_heads

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, h, dk).transpose(1, 2)

        q, k, v = heads(self.w_query(level)), heads(self.w_key(context)), heads(self.w_value(level))
        gamma = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dk), dim=-1)
        attended = (self.attn_dropout(gamma) @ v).transpose(1, 2).reshape(b, n, d)
        z_dot = attended + level
        z = self.ffn_dropout(self.ffn(self.norm(z_dot))) + z_dot
        return {"tokens": z, "attention": gamma}


class LevelEncoder(nn.Module):
    """``n_blocks`` stacked blocks for one level; ``self_attention`` for the context level."""

    def __init__(self, d_h: int, n_heads: int, d_ff: int, n_blocks: int, dropout: float, self_attention: bool):
        super().__init__()
        self.self_attention = self_attention
        self.blocks = nn.ModuleList(CrossLevelAttention(d_h, n_heads, d_ff, dropout) for _ in range(n_blocks))
        self.norm = nn.LayerNorm(d_h)  # final norm before pooling (the public code's ln_after)

    def forward(self, level: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = level
        for block in self.blocks:
            x = block(x, x if self.self_attention else context)["tokens"]
        return self.norm(x)


class MeanPool(nn.Module):
    """Tokens [B, N, d_h] -> [B, d_h]: the average patch."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens.mean(1)


class FlattenPool(nn.Module):
    """Tokens [B, N, d_h] -> [B, d]: a learned linear map of all patches (the public
    code's ``Linear(7*7*d_model, d_model)``), then GELU."""

    def __init__(self, n_tokens: int, d_h: int, d: int):
        super().__init__()
        self.proj = nn.Linear(n_tokens * d_h, d)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(tokens.flatten(1)))


def build_pool(kind: str, n_tokens: int, d_h: int, d: int) -> tuple[nn.Module, int]:
    """Pooling ``kind`` ("mean" or "flatten") and the width of the vector it gives."""
    if kind == "mean":
        return MeanPool(), d_h
    if kind == "flatten":
        return FlattenPool(n_tokens, d_h, d), d
    raise ValueError(f"unknown pooling {kind!r}; use 'mean' or 'flatten'")


class CrossLevelEncoder(nn.Module):
    """Tokens of every level -> pooled level vectors z_m.

    forward({"head": ū_h, "body": ū_b, "context": ū_c}) (each [B, N, d_h]) ->
    ``{"head": z_h, "body": z_b, "context": z_c}``, each [B, out_dim].
    """

    def __init__(self, levels: tuple[str, ...], d_h: int, n_heads: int, d_ff: int, n_blocks: int,
                 dropout: float, pooling: str, n_tokens: int, d: int, context_level: str = "context"):
        super().__init__()
        if context_level not in levels:
            raise ValueError(f"levels {levels} must include the context level {context_level!r}")
        self.levels = levels
        self.context_level = context_level
        self.encoders = nn.ModuleDict({
            m: LevelEncoder(d_h, n_heads, d_ff, n_blocks, dropout, self_attention=(m == context_level))
            for m in levels
        })
        pools = {m: build_pool(pooling, n_tokens, d_h, d) for m in levels}
        self.pools = nn.ModuleDict({m: p for m, (p, _) in pools.items()})
        self.out_dim = next(iter(pools.values()))[1]

    def forward(self, tokens: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        context = tokens[self.context_level]
        return {m: self.pools[m](self.encoders[m](tokens[m], context)) for m in self.levels}
