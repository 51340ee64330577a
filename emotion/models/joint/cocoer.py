"""CocoER: multi-level features aligned by competition and coordination (CVPR 2025).

Pipeline (the paper's, as its public code runs it), for a batch of people:

1. three windows (head, body, context), each through its own trainable backbone R_m
   (``backbones.py``) to a feature map, cut into 1x1 patches, projected to d_h
   (``attention.PatchEmbedding``);
2. cross-level attention (head->context, body->context, context self-attention;
   ``attention.py``), pooled to level vectors z_m;
3. per-level heads g_m (``LevelHead``): hidden h_m = ReLU(LN(W z_m + b)) (width d), last
   layer θ_l^m linear (k x d, with bias) -> level logits s_m;
4. vocabulary-informed alignment on the context window (``vocabulary.py``) -> y_t logits,
   hidden z_t and the hard pseudo label;
5-6. the workspace (``workspace.py``): competition (batched exact QPs, eliminate the worst
   level until one is left) and coordination (every head's last layer moved by η δ_l, per
   sample) -> refined logits ẑ_m;
7. fusion: a global classifier over [ẑ_head, ẑ_body, ẑ_context, z_t] -> fused logits.

With ``workspace: false`` step 5-6 is skipped and the fusion reads the unrefined logits,
so the two can be compared at equal cost elsewhere.

Choices, and why: the heads' hidden vectors are non-negative (ReLU after LayerNorm), which
makes the workspace step a descent direction for every level (workspace.py explains); the
refined features are the refined logits (the update changes only the last layer, so the
hidden layer's output would not change); the fusion also reads z_t, as the public code
feeds FFN_1's hidden vector to its global classifier.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from emotion.models.backbones import build_backbone, crops_to_input, feature_grid
from emotion.models.config_check import validated_config
from emotion.models.joint.attention import CrossLevelEncoder, PatchEmbedding
from emotion.models.joint.text_encoder import class_prototypes, load_text_encoder
from emotion.models.joint.vocabulary import VocabularyAlignment, build_vocabulary
from emotion.models.joint.workspace import Workspace, level_probabilities, pseudo_label_losses
from emotion.models.protocol import LEVELS
from emotion.models.protocol import InputSpec, adopt_config, model_id
from emotion.models.registry import register_model, register_spec

VOCABULARY_LEVEL = "vocabulary"

def resolve_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``cfg`` checked by ``CocoERConfig`` (every key of ``jobs/configs/model/cocoer.yaml``),
    with the values its nulls stand for; JSON-able (it goes into checkpoints)."""
    out = validated_config("cocoer", cfg)
    if out["eta"] is None:
        # The step moves a level's logits by about -η c α (h̃·h̃) (p - y) with c = 1/K for
        # BCE-mean and 1 for CE, and h̃·h̃ ~ d/2 for ReLU(LayerNorm) hidden vectors: these
        # steps move logits by O(1) at d = 256 for EMOTIC-sized K. Training adapts the
        # hidden scale (LayerNorm gain) to the step, since gradients flow through it.
        out["eta"] = 0.1 if out["multi_label"] else 0.005
    if out["prototypes_from_text"] is None:
        out["prototypes_from_text"] = out["pretrained"]
    return out


def _per_level(value: Any, level: str) -> Any:
    return value.get(level) if isinstance(value, Mapping) else value


def _placeholder_prototypes(k: int, dim: int) -> torch.Tensor:
    """Unit vectors standing in for text prototypes (random init / before a checkpoint loads)."""
    generator = torch.Generator().manual_seed(0)
    return nn.functional.normalize(torch.randn(k, dim, generator=generator), dim=-1)


class LevelHead(nn.Module):
    """g_θm: z_m -> hidden h_m = ReLU(LN(W z_m + b)) [d] -> logits θ_l h̃_m [k]."""

    def __init__(self, in_dim: int, d: int, k: int, dropout: float):
        super().__init__()
        self.hidden = nn.Sequential(nn.Linear(in_dim, d), nn.LayerNorm(d), nn.ReLU(), nn.Dropout(dropout))
        self.last = nn.Linear(d, k)  # θ_l^m

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        hidden = self.hidden(z)
        return {"hidden": hidden, "logits": self.last(hidden)}


class FusionClassifier(nn.Module):
    """Global classifier over the (refined) level logits and the vocabulary hidden z_t."""

    def __init__(self, n_levels: int, k: int, d: int, dropout: float):
        super().__init__()
        width = n_levels * k + d
        self.net = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, d), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(d, k))

    def forward(self, level_logits: torch.Tensor, vocab_hidden: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([level_logits.flatten(1), vocab_hidden], dim=-1))


class CocoER(nn.Module):
    """The joint model; also an ``emotion.models.protocol.EmotionModel`` (``predict``).

    forward(head, body, context): float [B, 3, S, S], ImageNet-normalised -> dict

    * ``logits`` [B, K]: fused prediction (after the workspace when it is on);
    * ``level_logits`` {head, body, context: [B, K]}: each level's own head, unrefined;
    * ``refined_level_logits`` {level: [B, K]}: after coordination (= unrefined when off);
    * ``vocab_logits`` [B, K], ``vocab_hidden`` [B, d], ``pseudo_label`` [B, K] (0/1);
    * ``dropped_levels`` [B, 2] int64: level indices (head 0, body 1, context 2) in the order
      competition eliminated them (-1 when the workspace is off);
    * ``lambdas`` [B, 2, 3]: λ of each QP step; ``alpha`` [B, 3]: their sum;
    * ``level_losses`` / ``refined_losses`` [B, 3]: pseudo-label losses before / after;
    * ``grad_distance`` [B]: ||δ_l||_F (zero when off).
    """

    name = "cocoer"
    input_levels: tuple[str, ...] = LEVELS

    def __init__(self, cfg: Mapping[str, Any]):
        super().__init__()
        cfg = resolve_config(cfg)
        adopt_config(self, cfg)
        self.use_workspace = bool(cfg["workspace"])
        self.vocab_level = str(cfg["vocab_level"])
        self.level_names = (*LEVELS, VOCABULARY_LEVEL)
        k, d_h, d = len(self.labels), int(cfg["d_h"]), int(cfg["d"])
        dropout = float(cfg["dropout"])

        backbones, patches, grids = {}, {}, {}
        for m in LEVELS:
            backbone, channels = build_backbone(_per_level(cfg["backbone"], m), bool(cfg["pretrained"]),
                                                _per_level(cfg["backbone_weights"], m))
            grids[m] = feature_grid(backbone, self.input_size)
            backbones[m] = backbone
            patches[m] = PatchEmbedding(channels, d_h, grids[m][0] * grids[m][1])
        if len(set(grids.values())) != 1:
            raise ValueError(f"all levels need the same feature grid for cross-level attention, got {grids}")
        n_tokens = grids[LEVELS[0]][0] * grids[LEVELS[0]][1]
        self.backbones = nn.ModuleDict(backbones)
        self.patch_embed = nn.ModuleDict(patches)
        self.encoder = CrossLevelEncoder(LEVELS, d_h, int(cfg["n_heads"]), int(cfg["d_ff"]), int(cfg["n_blocks"]),
                                         dropout, cfg["pooling"], n_tokens, d)
        self.heads = nn.ModuleDict({m: LevelHead(self.encoder.out_dim, d, k, dropout) for m in LEVELS})

        vocab_encoder, vocab_dim = build_backbone(cfg["vocab_backbone"], bool(cfg["pretrained"]),
                                                  cfg["vocab_backbone_weights"])
        if cfg["prototypes_from_text"]:  # computed once here; checkpoints carry the result
            prototypes = class_prototypes(self.labels, cfg["text_template"], load_text_encoder(cfg["text_encoder"]))
        else:
            prototypes = _placeholder_prototypes(k, int(cfg["text_dim"]))
        self.vocabulary: VocabularyAlignment = build_vocabulary(vocab_encoder, vocab_dim, prototypes, d, cfg)
        self.workspace = Workspace(float(cfg["eta"]), self.multi_label)
        self.fusion = FusionClassifier(len(LEVELS), k, d, dropout)

    # -- forward -------------------------------------------------------------------------
    def _check_inputs(self, images: Mapping[str, torch.Tensor]) -> None:
        shapes = {m: tuple(x.shape) for m, x in images.items()}
        expected = (3, self.input_size, self.input_size)
        for m, shape in shapes.items():
            if len(shape) != 4 or shape[1:] != expected:
                raise ValueError(f"{m} images must be [B, {', '.join(map(str, expected))}], got {list(shape)}")
        if len({s[0] for s in shapes.values()}) != 1:
            raise ValueError(f"head, body and context batches differ in size: {shapes}")

    def forward(self, head: torch.Tensor, body: torch.Tensor, context: torch.Tensor) -> dict[str, Any]:
        images = {"head": head, "body": body, "context": context}
        self._check_inputs(images)
        tokens = {m: self.patch_embed[m](self.backbones[m](images[m])) for m in LEVELS}
        z = self.encoder(tokens)
        head_out = {m: self.heads[m](z[m]) for m in LEVELS}
        hidden = torch.stack([head_out[m]["hidden"] for m in LEVELS], dim=1)  # [B, 3, d]
        logits = torch.stack([head_out[m]["logits"] for m in LEVELS], dim=1)  # [B, 3, K]
        vocab = self.vocabulary(images[self.vocab_level])
        b = logits.shape[0]
        out: dict[str, Any] = {
            "level_logits": {m: logits[:, i] for i, m in enumerate(LEVELS)},
            "level_vectors": z,
            "vocab_logits": vocab["vocab_logits"],
            "vocab_hidden": vocab["vocab_hidden"],
            "pseudo_label": vocab["pseudo_label"],
        }
        if self.use_workspace:
            weight = torch.stack([self.heads[m].last.weight for m in LEVELS])  # [3, K, d]
            bias = torch.stack([self.heads[m].last.bias for m in LEVELS])  # [3, K]
            ws = self.workspace(hidden, logits, weight, bias, vocab["pseudo_label"])
            refined = ws["refined_logits"]
            out.update({key: ws[key] for key in ("dropped_levels", "lambdas", "alpha", "level_losses",
                                                 "refined_losses", "grad_distance")})
        else:
            refined = logits
            losses = pseudo_label_losses(logits, vocab["pseudo_label"], self.multi_label)
            out.update({
                "dropped_levels": torch.full((b, len(LEVELS) - 1), -1, dtype=torch.long, device=logits.device),
                "lambdas": logits.new_zeros(b, len(LEVELS) - 1, len(LEVELS)),
                "alpha": logits.new_zeros(b, len(LEVELS)),
                "level_losses": losses,
                "refined_losses": losses,
                "grad_distance": logits.new_zeros(b),
            })
        out["refined_level_logits"] = {m: refined[:, i] for i, m in enumerate(LEVELS)}
        out["logits"] = self.fusion(refined, vocab["vocab_hidden"])
        return out

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Scores from logits: sigmoid (multi-label) or softmax."""
        return level_probabilities(logits, self.multi_label)

    # -- EmotionModel --------------------------------------------------------------------
    def _crops_to_tensor(self, crops: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        missing = [m for m in self.input_levels if m not in crops]
        if missing:
            raise KeyError(f"predict needs crops for levels {list(self.input_levels)}; missing {missing}")
        device = next(self.parameters()).device
        return {m: crops_to_input(crops[m], self.input_size, device, f"crop {m!r}") for m in self.input_levels}

    @torch.inference_mode()
    def predict(self, crops: dict[str, np.ndarray]) -> dict[str, Any]:
        """Score people from uint8 crops [B, S, S, 3] per level (RGB, S = input_size).

        Returns ``scores`` [B, K] float32, ``level_scores`` [B, 4, K] float32 (the levels'
        own unrefined predictions, then the vocabulary branch; names in ``level_names``),
        ``refined_level_scores`` [B, 3, K], ``pseudo_label`` [B, K] float32,
        ``dropped_levels`` [B, 2] int8 (-1: workspace off), ``refined`` [B] bool.
        """
        tensors = self._crops_to_tensor(crops)
        b, k = next(iter(tensors.values())).shape[0], len(self.labels)
        if b == 0:
            q = len(LEVELS)
            return {
                "scores": np.zeros((0, k), np.float32),
                "level_scores": np.zeros((0, len(self.level_names), k), np.float32),
                "level_names": list(self.level_names),
                "refined_level_scores": np.zeros((0, q, k), np.float32),
                "pseudo_label": np.zeros((0, k), np.float32),
                "dropped_levels": np.zeros((0, q - 1), np.int8),
                "refined": np.zeros(0, bool),
            }
        was_training = self.training
        self.eval()
        try:
            out = self(**tensors)
        finally:
            self.train(was_training)
        prob = self.probabilities
        level_scores = torch.stack([prob(out["level_logits"][m]) for m in LEVELS] + [prob(out["vocab_logits"])], 1)
        refined_scores = torch.stack([prob(out["refined_level_logits"][m]) for m in LEVELS], 1)
        return {
            "scores": prob(out["logits"]).float().cpu().numpy(),
            "level_scores": level_scores.float().cpu().numpy(),
            "level_names": list(self.level_names),
            "refined_level_scores": refined_scores.float().cpu().numpy(),
            "pseudo_label": out["pseudo_label"].float().cpu().numpy(),
            "dropped_levels": out["dropped_levels"].cpu().numpy().astype(np.int8),
            "refined": np.full(b, self.use_workspace, dtype=bool),
        }

    def output_columns(self, outputs: dict[str, Any]) -> dict:
        """Fused scores, each level's own scores (vocabulary included), whether the
        workspace refined them, and the levels competition dropped, by name."""
        names = list(outputs["level_names"])
        dropped = [[LEVELS[int(j)] for j in order if int(j) >= 0] for order in np.asarray(outputs["dropped_levels"])]
        return {"scores": outputs["scores"],
                "level_scores": {name: outputs["level_scores"][:, j] for j, name in enumerate(names)},
                "refined": np.asarray(outputs["refined"], dtype=bool),
                "dropped_levels": dropped}


@register_spec("cocoer")
def cocoer_input_spec(cfg: Mapping[str, Any], checkpoint_hash: str = "untrained") -> InputSpec:
    resolved = resolve_config(cfg)
    return InputSpec(name="cocoer", levels=LEVELS, input_size=int(resolved["input_size"]),
                     labels=tuple(resolved["labels"]), multi_label=bool(resolved["multi_label"]),
                     model_id=model_id("cocoer", checkpoint_hash))


@register_model("cocoer")
def build_cocoer(cfg: Mapping[str, Any]) -> CocoER:
    """Build CocoER from its config (``CocoERConfig``)."""
    return CocoER(cfg)
