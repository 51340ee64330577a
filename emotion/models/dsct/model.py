"""DSCT: single-stage emotion recognition with a Decoupled Subject-Context Transformer
(ACM MM 2024). One network finds the people in a whole image and recognises each one's
emotion.

image [B, 3, S, S] -> backbone (``backbone.py``: ImageNet CNN, one scale, 1x1 projection
to D) -> transformer encoder (``encoder.py``) -> decoder (``decoder.py``) with Qs subject
queries (box + emotion) and Qc context queries (scene cues), decoupled in the first
``fuse_from_layer`` layers and fused after through spatial and semantic relations
(``relations.py``) -> per layer, shared heads on the subject queries:

* person head: Linear(D, 1), the is-a-person logit (detection score, matching);
* emotion head: Linear(D, K), sigmoid-focal trained for multi- and single-label sets;
* box head (inside the decoder, iterative refinement): cx, cy, w, h in [0, 1].

forward(context [B, 3, S, S] ImageNet-normalised, the whole image; S = ``input_size`` in
training and ``predict``, though any size divisible by the backbone's stride works) -> dict
  * ``pred_logits`` [B, Qs, K]: emotion logits per subject query (last layer);
  * ``pred_person_logits`` [B, Qs]: is-a-person logit;
  * ``pred_boxes`` [B, Qs, 4]: normalised (cx, cy, w, h), sigmoid;
  * ``aux_outputs``: dec_layers - 1 dicts with the same three keys, from layers 0..L-2;
  * ``context_features`` [B, Qc, D], ``context_boxes`` [B, Qc, 4]: the context queries
    after the last layer and where they looked (diagnostics).

The argument is named ``context`` because the model's one input level is the protocol's
``"context"`` level (the whole image resized to S x S; ``emotion.crops.context_window``):
``emotion.models.protocol.LEVELS`` has no other whole-image level, and the training loop
calls ``model(**{level: images})``.

Config: ``emotion.models.settings.DSCTConfig``; ``jobs/configs/model/dsct.yaml`` gives the
sizes used here, with the paper's in brackets.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from emotion.models.backbones import crops_to_input
from emotion.models.config_check import validated_config
from emotion.models.dsct.backbone import build_dsct_backbone
from emotion.models.dsct.decoder import build_decoder
from emotion.models.dsct.encoder import build_encoder
from emotion.models.dsct.postprocess import emotion_probabilities
from emotion.models.dsct.relations import RELATIONS
from emotion.models.protocol import InputSpec, adopt_config, model_id, single_level_columns
from emotion.models.registry import register_model, register_spec

OUTPUT_KEYS: tuple[str, ...] = ("pred_logits", "pred_person_logits", "pred_boxes")
PRIOR_PROB = 0.01  # focal-loss prior: heads start predicting "no person", "no emotion"


def resolve_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``cfg`` checked by ``DSCTConfig`` (every key of ``jobs/configs/model/dsct.yaml``), with
    the value ``frozen_bn: null`` stands for and the relations in their fixed order;
    JSON-able (it goes into checkpoints)."""
    out = validated_config("dsct", cfg)
    if out["frozen_bn"] is None:
        out["frozen_bn"] = out["pretrained"]
    out["relations"] = [r for r in RELATIONS if r in out["relations"]]
    return out


class DSCT(nn.Module):
    """The DSCT network; also an ``emotion.models.protocol.EmotionModel`` (module doc)."""

    name = "dsct"
    input_levels: tuple[str, ...] = ("context",)
    finds_people = True  # single stage: the predictor calls find_people, no detector

    def __init__(self, cfg: Mapping[str, Any]):
        super().__init__()
        cfg = resolve_config(cfg)
        adopt_config(self, cfg)
        dim, k = cfg["hidden_dim"], len(self.labels)
        qs, qc = cfg["num_subject_queries"], cfg["num_context_queries"]
        self.backbone = build_dsct_backbone(cfg)
        self.encoder = build_encoder(cfg)
        self.decoder = build_decoder(cfg)
        self.subject_embed = nn.Embedding(qs, dim)  # content of the subject queries
        self.subject_anchor = nn.Parameter(self._initial_anchors(qs))  # reference boxes, logit space
        self.context_embed = nn.Embedding(qc, dim)  # content of the context queries
        self.context_pos = nn.Embedding(qc, dim)  # their position part
        self.person_head = nn.Linear(dim, 1)
        self.emotion_head = nn.Linear(dim, k)
        prior_bias = -math.log((1 - PRIOR_PROB) / PRIOR_PROB)
        nn.init.constant_(self.person_head.bias, prior_bias)
        nn.init.constant_(self.emotion_head.bias, prior_bias)

    @staticmethod
    def _initial_anchors(num: int) -> torch.Tensor:
        """Boxes of side 0.3 centred on a jittered grid over the image, in logit space [Qs, 4]."""
        side = math.ceil(math.sqrt(num))
        idx = torch.arange(num, dtype=torch.float32)
        centre = torch.stack(((idx % side + 0.5) / side, (idx // side + 0.5) / math.ceil(num / side)), dim=-1)
        centre = (centre + (torch.rand(num, 2) - 0.5) * 0.1 / side).clamp(0.05, 0.95)
        boxes = torch.cat((centre, torch.full((num, 2), 0.3)), dim=-1)
        return torch.log(boxes / (1 - boxes))

    # -- forward -------------------------------------------------------------------------
    def forward(self, context: torch.Tensor) -> dict[str, Any]:
        if context.ndim != 4 or context.shape[1] != 3:
            raise ValueError(f"dsct images must be [B, 3, S, S], got {list(context.shape)}")
        b = context.shape[0]
        tokens, pos, grid_hw = self.backbone(context)
        memory = self.encoder(tokens, pos)
        decoded = self.decoder(
            subject=self.subject_embed.weight[None].expand(b, -1, -1),
            anchors=torch.sigmoid(self.subject_anchor)[None].expand(b, -1, -1),
            context=self.context_embed.weight[None].expand(b, -1, -1),
            context_pos=self.context_pos.weight[None].expand(b, -1, -1),
            memory=memory, memory_pos=pos, grid_hw=grid_hw)
        hidden = decoded["hidden"]  # [L, B, Qs, D]
        emotion_logits = self.emotion_head(hidden)  # [L, B, Qs, K]
        person_logits = self.person_head(hidden).squeeze(-1)  # [L, B, Qs]
        layers = [dict(zip(OUTPUT_KEYS, parts)) for parts in zip(emotion_logits, person_logits, decoded["boxes"])]
        return {**layers[-1], "aux_outputs": layers[:-1], "context_features": decoded["context"],
                "context_boxes": decoded["context_boxes"]}

    # -- training helpers ----------------------------------------------------------------
    def parameter_groups(self, lr: float, backbone_lr_scale: float = 0.1,
                         weight_decay: float = 1e-4) -> list[dict[str, Any]]:
        """AdamW groups as the paper trains (lr 2e-4, backbone x 0.1, wd 1e-4): the
        backbone CNN's parameters at ``lr * backbone_lr_scale``, everything else at ``lr``."""
        body = [p for p in self.backbone.body.parameters() if p.requires_grad]
        body_ids = {id(p) for p in body}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in body_ids]
        return [{"params": rest, "lr": lr, "weight_decay": weight_decay},
                {"params": body, "lr": lr * backbone_lr_scale, "weight_decay": weight_decay}]

    # -- inference -----------------------------------------------------------------------
    @torch.inference_mode()
    def detect(self, images: np.ndarray) -> dict[str, torch.Tensor]:
        """uint8 RGB images [B, S, S, 3] -> the forward's outputs, computed in eval mode
        (the module's mode is restored)."""
        x = crops_to_input(images, self.input_size, next(self.parameters()).device, "dsct images")
        was_training = self.training
        self.eval()
        try:
            return self(x)
        finally:
            self.train(was_training)

    @torch.inference_mode()
    def find_people(self, images: Sequence[np.ndarray], score_threshold: float = 0.5,
                    max_people: int | None = None) -> list[dict[str, np.ndarray]]:
        """Whole images (uint8 RGB [H, W, 3], any sizes) -> per image the people found:
        ``boxes`` float32 [n, 4] (x1, y1, x2, y2 in that image's pixels), ``scores`` [n]
        (person probability >= ``score_threshold``, highest first, at most
        ``max_people``) and ``emotion_probs`` [n, K]. Each image is resized to the
        model's square input as training saw it (``emotion.crops.context_window``)."""
        from emotion.crops import context_window
        from emotion.models.dsct.postprocess import postprocess

        if len(images) == 0:
            return []
        squares = np.stack([context_window(np.asarray(image), self.input_size) for image in images])
        outputs = self.detect(squares)
        sizes = [tuple(np.asarray(image).shape[:2]) for image in images]
        found = []
        for (height, width), result in zip(sizes, postprocess(outputs, sizes, multi_label=self.multi_label,
                                                                min_score=float(score_threshold))):
            keep = slice(0, max_people)
            boxes = result["boxes"][keep].float().cpu().numpy()
            boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)  # inside the image, as detector boxes are
            boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
            found.append({"boxes": boxes,
                          "scores": result["scores"][keep].float().cpu().numpy(),
                          "emotion_probs": result["emotion_probs"][keep].float().cpu().numpy()})
        return found

    def predict(self, crops: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The ``EmotionModel`` call: one row per person of the two-stage predictor.

        ``crops["context"]``: uint8 [B, S, S, 3], each row's whole image (rows of one
        image repeat it). ``crops["person_boxes"]`` (optional): float [B, 4], each row's
        person box (x1, y1, x2, y2) normalised to [0, 1] in that image. A row's scores
        are those of the subject query whose box overlaps the person's box most (the
        DSCT evaluation protocol, ``evaluation.match_people``); without ``person_boxes``
        (or when no query overlaps), those of the query with the highest person score.

        Returns ``scores`` float32 [B, K] (sigmoid multi-label, softmax single-label),
        ``person_scores`` float32 [B] and ``boxes`` float32 [B, 4] (normalised x1, y1,
        x2, y2) of the query each row took. For the whole-image path (DSCT's own people)
        use ``detect`` + ``postprocess.postprocess``.
        """
        from emotion.models.dsct.evaluation import match_people

        if "context" not in crops:
            raise KeyError(f"dsct needs the 'context' crop (the whole image); got {sorted(crops)}")
        k = len(self.labels)
        n = len(crops["context"])
        if n == 0:
            return {"scores": np.zeros((0, k), np.float32), "person_scores": np.zeros(0, np.float32),
                    "boxes": np.zeros((0, 4), np.float32)}
        out = self.detect(crops["context"])
        probs = emotion_probabilities(out["pred_logits"], self.multi_label).float().cpu().numpy()
        person = torch.sigmoid(out["pred_person_logits"]).float().cpu().numpy()
        cx, cy, w, h = out["pred_boxes"].float().cpu().numpy().transpose(2, 0, 1)
        boxes = np.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), axis=-1)  # [B, Qs, 4]
        people = crops.get("person_boxes")
        chosen = person.argmax(axis=1)
        if people is not None:
            people = np.asarray(people, np.float32).reshape(n, 4)
            for row in range(n):
                index, _ = match_people(boxes[row], person[row], people[row:row + 1])
                if index[0] >= 0:
                    chosen[row] = index[0]
        rows = np.arange(n)
        return {"scores": probs[rows, chosen].astype(np.float32), "person_scores": person[rows, chosen],
                "boxes": boxes[rows, chosen].astype(np.float32)}

    def output_columns(self, outputs: dict[str, np.ndarray]) -> dict:
        """Scores of the whole-image (``context``) level, no refinement."""
        return single_level_columns(outputs["scores"], level="context")


@register_spec("dsct")
def dsct_input_spec(cfg: Mapping[str, Any], checkpoint_hash: str = "untrained") -> InputSpec:
    """The ``InputSpec`` of a DSCT config: the whole image (``context`` level) at ``input_size``."""
    resolved = resolve_config(cfg)
    return InputSpec(name="dsct", levels=DSCT.input_levels, input_size=resolved["input_size"],
                     labels=tuple(resolved["labels"]), multi_label=resolved["multi_label"],
                     model_id=model_id("dsct", checkpoint_hash), finds_people=True)


@register_model("dsct")
def build_dsct(cfg: Mapping[str, Any]) -> DSCT:
    """Build DSCT from its config (``DSCTConfig``); a trained model comes from its
    checkpoint (``emotion.models.loading.load_model_from_checkpoint``)."""
    return DSCT(cfg)
