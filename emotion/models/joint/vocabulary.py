"""Vocabulary-informed alignment (step 4 of the pipeline in ``cocoer.py``): the pseudo label y_t.

A frozen image encoder embeds the whole image (the context crop): û = normalise(mean-pooled
ImageNet backbone features). A linear projection ω (no bias) maps û into the text space of
the class prototypes U_text (one unit vector per class from ``text_encoder``; stored as a
buffer, so checkpoints carry them). FFN_1 reads the projected embedding and gives the
vocabulary logits y_t and its hidden vector z_t (width d, like the level vectors).

Pieces and what trains when:

* image encoder: frozen always (kept in eval mode even when the model trains);
* ω: trained only by ``pretrain_projection`` (its own short step before the main
  training; ``collect_embeddings`` turns (context images, labels) batches into its
  input), frozen inside the full model;
* FFN_1: trains with the model (the vocabulary classification loss).

``pretrain_projection`` minimises, over images b with label sets Y_b (non-empty),

    L(ω) = mean_b  (1/|Y_b|) Σ_{j ∈ Y_b} || ωᵀ û_b - t_j ||²

i.e. eq. (10) ||ωᵀÛ_img - U_text||² with Û_img the image embedding repeated once per class
and U_text restricted to the image's own labels (against all k prototypes the minimiser
would be their mean for every image, which carries no information). Its minimiser sends
each image to the mean prototype of its labels.

FFN_1 input: the projected embedding x = ωᵀû (t values) together with its similarity to
every prototype, U_textᵀ x (k values): the per-class comparison of ωᵀÛ_img with U_text, so
the prototypes inform the prediction at inference and not only ω's pre-training.

Pseudo label: multi-label -> sigmoid(y_t) > ``threshold`` (paper: 0.3), a 0/1 vector;
single-label -> one-hot of argmax y_t (a hard label as in the paper, and hard labels make
the workspace step a common descent direction for every level: see workspace.py).
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn


def make_pseudo_label(logits: torch.Tensor, multi_label: bool, threshold: float = 0.3) -> torch.Tensor:
    """Vocabulary logits [B, k] -> hard pseudo label [B, k] (float 0/1, no gradient)."""
    logits = logits.detach()
    if multi_label:
        return (torch.sigmoid(logits) > threshold).to(logits.dtype)
    return F.one_hot(logits.argmax(-1), logits.shape[-1]).to(logits.dtype)


def targets_to_multi_hot(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class indices [n] or multi-hot / one-hot [n, k] -> float [n, k]."""
    if targets.dim() == 1:
        return F.one_hot(targets.long(), num_classes).float()
    if targets.dim() != 2 or targets.shape[1] != num_classes:
        raise ValueError(f"targets must be [n] class indices or [n, {num_classes}] multi-hot, "
                         f"got {tuple(targets.shape)}")
    return targets.float()


def projection_loss(projected: torch.Tensor, targets: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Mean over images (with at least one label) of the mean squared distance from ωᵀû to
    the prototypes of its labels. projected [n, t], targets [n, k] 0/1, prototypes [k, t]."""
    sq_dist = (projected.pow(2).sum(1, keepdim=True) - 2 * projected @ prototypes.T
               + prototypes.pow(2).sum(1)[None])  # fmt: skip
    counts = targets.sum(1)
    has_label = counts > 0
    if not has_label.any():
        raise ValueError("projection_loss: no image in the batch has a label")
    per_image = (targets * sq_dist).sum(1)[has_label] / counts[has_label]
    return per_image.mean()


class VocabularyAlignment(nn.Module):
    """Frozen image encoder + ω + FFN_1.

    forward(images [B, 3, S, S]) -> ``vocab_logits`` [B, k], ``vocab_hidden`` z_t [B, d],
    ``pseudo_label`` [B, k], ``projected`` ωᵀû [B, t].
    """

    def __init__(self, image_encoder: nn.Module, image_dim: int, prototypes: torch.Tensor, hidden_dim: int,
                 multi_label: bool, threshold: float = 0.3, dropout: float = 0.0):
        super().__init__()
        if prototypes.dim() != 2:
            raise ValueError(f"prototypes must be [k, text_dim], got {tuple(prototypes.shape)}")
        k, text_dim = prototypes.shape
        self.image_encoder = image_encoder.requires_grad_(False).eval()
        self.projection = nn.Linear(image_dim, text_dim, bias=False)  # ω
        nn.init.orthogonal_(self.projection.weight)  # as the public code initialises W
        self.projection.requires_grad_(False)
        self.register_buffer("prototypes", prototypes.float().clone())
        self.ffn = nn.Sequential(nn.Linear(text_dim + k, hidden_dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.LayerNorm(hidden_dim))  # FFN_1 up to its last hidden layer z_t
        self.classifier = nn.Linear(hidden_dim, k)  # FFN_1's output layer -> y_t
        self.multi_label = multi_label
        self.threshold = float(threshold)

    def train(self, mode: bool = True) -> "VocabularyAlignment":
        super().train(mode)
        self.image_encoder.eval()  # frozen: BatchNorm statistics must not drift
        return self

    @torch.no_grad()
    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """û: [B, 3, S, S] -> unit vectors [B, image_dim] (frozen, no gradient)."""
        features = self.image_encoder(images)
        return F.normalize(features.float().mean((2, 3)), dim=-1).to(images.dtype)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        projected = self.projection(self.embed_images(images))
        similarity = projected @ self.prototypes.T.to(projected.dtype)
        hidden = self.ffn(torch.cat([projected, similarity], dim=-1))
        logits = self.classifier(hidden)
        return {
            "vocab_logits": logits,
            "vocab_hidden": hidden,
            "pseudo_label": make_pseudo_label(logits, self.multi_label, self.threshold),
            "projected": projected,
        }


def pretrain_projection(vocab: VocabularyAlignment, image_embeddings: torch.Tensor, targets: torch.Tensor,
                        *, steps: int, lr: float, batch_size: int, weight_decay: float, seed: int) -> list[float]:
    """Fit ω alone on precomputed embeddings (``vocab.embed_images``) and labels.

    Args:
        image_embeddings: û [n, image_dim].
        targets: class indices [n] or multi-hot [n, k].
        steps, lr, batch_size, weight_decay: Adam(W) on random mini-batches (seeded).

    Returns the loss of every step; ω is frozen again afterwards.
    """
    k = vocab.prototypes.shape[0]
    targets = targets_to_multi_hot(targets, k).to(image_embeddings.device)
    if image_embeddings.shape[0] != targets.shape[0]:
        raise ValueError(f"{image_embeddings.shape[0]} embeddings but {targets.shape[0]} targets")
    labelled = targets.sum(1) > 0
    image_embeddings, targets = image_embeddings[labelled], targets[labelled]
    if not len(targets):
        raise ValueError("pretrain_projection: no image has a label")
    weight = vocab.projection.weight
    weight.requires_grad_(True)
    optimizer = torch.optim.AdamW([weight], lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    history = []
    try:
        for _ in range(steps):
            idx = torch.randperm(len(targets), generator=generator)[:batch_size].to(targets.device)
            loss = projection_loss(vocab.projection(image_embeddings[idx]), targets[idx], vocab.prototypes)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            history.append(float(loss.detach()))
    finally:
        weight.requires_grad_(False)
        weight.grad = None
    return history


@torch.no_grad()
def collect_embeddings(vocab: VocabularyAlignment, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                       max_images: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the frozen encoder over ``(context images [B, 3, S, S], targets)`` batches
    (targets: indices [B] or multi-hot [B, k]) -> (û [n, image_dim], multi-hot [n, k]) on
    the CPU, ready for ``pretrain_projection``. Stops after ``max_images`` if given."""
    k = vocab.prototypes.shape[0]
    device = vocab.prototypes.device
    embeddings, targets, seen = [], [], 0
    for images, labels in batches:
        embeddings.append(vocab.embed_images(images.to(device)).float().cpu())
        targets.append(targets_to_multi_hot(labels, k).cpu())
        seen += len(labels)
        if max_images is not None and seen >= max_images:
            break
    if not embeddings:
        raise ValueError("collect_embeddings: no batches")
    return torch.cat(embeddings)[:max_images], torch.cat(targets)[:max_images]


def build_vocabulary(image_encoder: nn.Module, image_dim: int, prototypes: torch.Tensor, hidden_dim: int,
                     cfg) -> VocabularyAlignment:
    """``cfg``: a resolved CocoER config (``multi_label``, ``pseudo_label_threshold``, ``dropout``)."""
    return VocabularyAlignment(
        image_encoder, image_dim, prototypes, hidden_dim=hidden_dim, multi_label=bool(cfg["multi_label"]),
        threshold=float(cfg["pseudo_label_threshold"]), dropout=float(cfg["dropout"]),
    )
