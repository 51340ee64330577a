"""Building blocks shared by the encoder, the decoder and the relation module: an MLP
(DETR's), a feed-forward sublayer and an attention sublayer, both post-norm residual
(``x = norm(x + dropout(f(x)))``), as in DETR's transformer.

Tensors are batch-first: [B, L, D].
"""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them: [..., in_dim] -> [..., out_dim]."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x


class FeedForward(nn.Module):
    """Post-norm residual FFN: [B, L, D] -> [B, L, D]."""

    def __init__(self, dim: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, ffn_dim), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                 nn.Linear(ffn_dim, dim))
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.dropout(self.net(x)))


def with_pos(x: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
    return x if pos is None else x + pos


class AttentionBlock(nn.Module):
    """Post-norm residual multi-head attention.

    forward(x [B, L, D], x_pos, keys [B, S, D], keys_pos, bias=None, need_weights=False)
      -> (x [B, L, D], weights [B, L, S] averaged over heads, or None)

    Queries are ``x + x_pos``, keys ``keys + keys_pos``, values ``keys``. ``bias`` is an
    additive attention bias [B, H, L, S] (the relation module's), differentiable.
    """

    def __init__(self, dim: int, nheads: int, dropout: float):
        super().__init__()
        self.nheads = nheads
        self.attn = nn.MultiheadAttention(dim, nheads, dropout=dropout, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, x_pos: torch.Tensor | None, keys: torch.Tensor, keys_pos: torch.Tensor | None,
                bias: torch.Tensor | None = None, need_weights: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        mask = None
        if bias is not None:
            b, h, length, source = bias.shape
            mask = bias.reshape(b * h, length, source).to(x.dtype)
        out, weights = self.attn(with_pos(x, x_pos), with_pos(keys, keys_pos), keys, attn_mask=mask,
                                 need_weights=need_weights, average_attn_weights=True)
        return self.norm(x + self.dropout(out)), weights
