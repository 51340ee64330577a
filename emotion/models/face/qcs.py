"""``qcs``: a facial-expression model trained with Quadruplet Cross Similarity
(Wang et al., AAAI 2025), on the head crop.

The network is one branch: gray conversion (FER data is gray) -> an ImageNet backbone
(``emotion.models.backbones``, MobileNetV2 by default) -> a 1x1 embedding to D-dim
tokens (one per feature-map cell) -> mean pool -> dropout -> linear classifier. That is
all inference runs.

Training adds the quadruplet refinement on the same tokens. A quadruplet holds rows
``(a1, a2, b1, b2)`` of the batch: a1, a2 of one class, b1, b2 of another
(``emotion.training.quadruplets``). Each member x has a same-class partner s(x) and a
cross-class partner o(x), laid out centrally symmetric: s = (a2, a1, b2, b1) and
o = (b1, b2, a1, a2). Cross-similarity attention ``CSA(x, y) = softmax(q(x) k(y)^T /
sqrt(D)) v(y)`` takes from y what x's tokens resemble; what x shares with its own class
is kept and what it shares with the other class is removed as redundant:

    refined(x) = x + CSA(x, s(x)) - CSA(x, o(x))

The four branches share every weight (one module applied to the four positions), so
swapping the two pairs swaps the outputs. The refined tokens are classified by the same
head; the loss is the mean of the eight cross-entropy terms (four base, four refined;
``emotion.training.qcs_family``). Gradients from the refined terms shape the shared
backbone, which is what inference keeps.

forward(head [B, 3, S, S] ImageNet-normalised, quadruplets int64 [Q, 4] or None) -> dict
  * ``logits`` [B, K]: the base branch (the one inference uses);
  * ``features`` [B, D]: pooled base tokens;
  * ``refined_logits`` [Q, 4, K]: only when ``quadruplets`` is given.

``predict`` (``EmotionModel``) takes uint8 crops [B, S, S, 3] and returns softmax
``scores`` [B, K]; with ``test_flip`` the mean of the face's and its mirror image's
softmax (faces are left-right symmetric in expression, and training flips them too);
with ``prior_correction`` tau > 0 the logits first lose tau * log(class prior)
(``prior_offset``).
``cross_similarity: false`` builds the plain network without the attention (the
ablation's cross-entropy baseline: same backbone, same head).

Trained weights load from a checkpoint of ``emotion train`` (``model.checkpoint``).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from emotion.models.backbones import build_backbone
from emotion.models.config_check import validated_config
from emotion.models.face.cnn import ToGray, head_logits
from emotion.models.protocol import InputSpec, adopt_config, model_id, single_level_columns
from emotion.models.registry import register_model, register_spec

# Rows of a quadruplet (a1, a2, b1, b2): each member's same-class and cross-class partner.
SAME_PARTNER = (1, 0, 3, 2)
CROSS_PARTNER = (2, 3, 0, 1)


def resolve_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``cfg`` checked by ``QCSConfig`` (every key of ``jobs/configs/model/qcs.yaml``), as
    plain values; labels are required."""
    return validated_config("qcs", cfg)


class CrossSimilarityAttention(nn.Module):
    """``CSA(x, y)``: for each token of x, the attention-weighted values of y's tokens.

    x [M, N, D], y [M, N', D] -> [M, N, D].
    """

    def __init__(self, dim: int):
        super().__init__()
        self.query = nn.Linear(dim, dim, bias=False)
        self.key = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(dim, dim)
        self.scale = 1.0 / math.sqrt(dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        similarity = self.query(x) @ self.key(y).transpose(1, 2) * self.scale
        return torch.softmax(similarity, dim=-1) @ self.value(y)


class QCSNet(nn.Module):
    """The QCS face model; an ``EmotionModel`` (see the module doc)."""

    name = "qcs"
    input_levels: tuple[str, ...] = ("head",)

    def __init__(self, cfg: Mapping[str, Any]):
        super().__init__()
        cfg = resolve_config(cfg)
        adopt_config(self, cfg)
        dim = cfg["embed_dim"]
        self.to_gray = ToGray(cfg["equalize"]) if cfg["grayscale"] else nn.Identity()
        self.backbone, channels = build_backbone(cfg["backbone"], bool(cfg["pretrained"]), cfg["backbone_weights"])
        self.embed = nn.Sequential(nn.Conv2d(channels, dim, 1, bias=False), nn.BatchNorm2d(dim), nn.ReLU(inplace=True))
        self.cross = CrossSimilarityAttention(dim) if cfg["cross_similarity"] else None
        self.dropout = nn.Dropout(float(cfg["dropout"]))
        self.classifier = nn.Linear(dim, len(self.labels))

    def tokens(self, head: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] -> tokens [B, N, D] (N = cells of the backbone's feature map)."""
        if head.ndim != 4 or head.shape[1] != 3:
            raise ValueError(f"head images must be [B, 3, S, S], got {list(head.shape)}")
        return self.embed(self.backbone(self.to_gray(head))).flatten(2).transpose(1, 2)

    def classify(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [..., N, D] -> logits [..., K] (mean pool, dropout, linear)."""
        return self.classifier(self.dropout(tokens.mean(dim=-2)))

    def refine(self, tokens: torch.Tensor, quadruplets: torch.Tensor) -> torch.Tensor:
        """Base tokens [B, N, D] and quadruplets [Q, 4] -> refined tokens [Q, 4, N, D]."""
        if self.cross is None:
            raise RuntimeError("this qcs model was built with cross_similarity=false: it has no refined branch")
        quads = tokens[quadruplets]  # [Q, 4, N, D]
        q, _, n, d = quads.shape
        members = quads.reshape(q * 4, n, d)
        same = quads[:, list(SAME_PARTNER)].reshape(q * 4, n, d)
        other = quads[:, list(CROSS_PARTNER)].reshape(q * 4, n, d)
        refined = members + self.cross(members, same) - self.cross(members, other)
        return refined.reshape(q, 4, n, d)

    def forward(self, head: torch.Tensor, quadruplets: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        tokens = self.tokens(head)
        out = {"logits": self.classify(tokens), "features": tokens.mean(dim=1)}
        if quadruplets is not None:
            quadruplets = quadruplets.reshape(-1, 4)
            out["refined_logits"] = self.classify(self.refine(tokens, quadruplets))
        return out

    def predict(self, crops: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """uint8 head crops [B, S, S, 3] (RGB, S = input_size) -> ``scores`` float32 [B, K]:
        the base branch alone (with ``test_flip``, averaged with the mirrored crops')."""
        heads = crops["head"]
        if self.config["test_flip"]:  # faces and mirror images in one forward
            heads = np.concatenate([heads, heads[:, :, ::-1]])
        logits = head_logits(self, {**crops, "head": heads})
        if self.config["prior_correction"]:
            logits = logits - self.prior_offset.to(logits.device)
        scores = torch.softmax(logits, dim=-1)
        if self.config["test_flip"]:
            scores = scores.reshape(2, len(heads) // 2, scores.shape[-1]).mean(dim=0)
        return {"scores": scores.cpu().numpy().astype(np.float32)}

    @property
    def prior_offset(self) -> torch.Tensor:
        """[K] ``prior_correction * log(class_prior)``: subtracted from the logits at
        inference, it moves the scores from the training data's class frequencies toward
        equal ones (post-hoc logit adjustment, Menon et al., ICLR 2021), so rare classes
        (disgust, fear, contempt) are not lost to frequent ones on faces of other sources."""
        prior = torch.as_tensor(self.config["class_prior"], dtype=torch.float32).clamp_min(1e-4)
        return float(self.config["prior_correction"]) * torch.log(prior / prior.sum())

    def output_columns(self, outputs: dict[str, np.ndarray]) -> dict:
        return single_level_columns(outputs["scores"])


@register_spec("qcs")
def qcs_input_spec(cfg: Mapping[str, Any], checkpoint_hash: str = "untrained") -> InputSpec:
    resolved = resolve_config(cfg)
    return InputSpec(name="qcs", levels=QCSNet.input_levels, input_size=resolved["input_size"],
                     labels=tuple(resolved["labels"]), multi_label=False,
                     model_id=model_id("qcs", checkpoint_hash))


@register_model("qcs")
def build_qcs(cfg: Mapping[str, Any]) -> QCSNet:
    """Build ``qcs`` from its config (``QCSConfig``); a trained model comes from its
    checkpoint (``model.checkpoint``, ``emotion.models.loading``)."""
    return QCSNet(cfg)
