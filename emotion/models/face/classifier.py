"""The face-only emotion model: mini-Xception on the head crop, as an ``EmotionModel``."""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from emotion.models.config_check import validated_config
from emotion.models.protocol import InputSpec, model_id, single_level_columns
from emotion.models.registry import register_model, register_spec
from emotion.models.face.mini_xception import FER_LABELS, build_face_model, preprocess_faces
from emotion.weights import KNOWN_WEIGHTS, resolve, sha256_of


class FaceExpressionModel:
    """Scores the head crop of each person with a 7-class facial-expression network."""

    name = "fer"
    multi_label = False
    input_levels = ("head",)
    input_size = 64

    def __init__(self, network: torch.nn.Module, checkpoint_hash: str, device: str = "cpu"):
        # Channels-last: mini-Xception's depthwise convolutions and pooling run 2-4x faster
        # on CPU at batch 8-32 (same values to ~1e-8), which is what dynamic batching buys.
        self.network = network.eval().to(device, memory_format=torch.channels_last)
        self.labels = tuple(FER_LABELS)
        self.checkpoint_hash = checkpoint_hash
        self.device = device

    def to(self, device: str) -> "FaceExpressionModel":
        self.network.to(device, memory_format=torch.channels_last)
        self.device = device
        return self

    @torch.inference_mode()
    def predict(self, crops: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        faces = crops["head"]
        if len(faces) == 0:
            return {"scores": np.zeros((0, len(self.labels)), dtype=np.float32)}
        inputs = preprocess_faces(list(faces)).to(self.device).contiguous(memory_format=torch.channels_last)
        logits = self.network(inputs)["logits"]
        scores = torch.softmax(logits.float(), dim=-1).cpu().numpy()
        return {"scores": scores.astype(np.float32)}

    def output_columns(self, outputs: dict[str, np.ndarray]) -> dict:
        return single_level_columns(outputs["scores"])


def _weights_hash(weights: str) -> str:
    spec = KNOWN_WEIGHTS.get(weights)
    return spec.sha256 if spec is not None and spec.sha256 else sha256_of(resolve(weights))


@register_spec("fer")
def fer_input_spec(cfg: Mapping) -> InputSpec:
    weights = validated_config("fer", cfg)["weights"]
    return InputSpec(name="fer", levels=FaceExpressionModel.input_levels, input_size=FaceExpressionModel.input_size,
                     labels=tuple(FER_LABELS), multi_label=False, model_id=model_id("fer", _weights_hash(weights)))


@register_model("fer")
def build_face_expression_model(cfg: Mapping) -> FaceExpressionModel:
    """The mini-Xception of ``cfg.weights`` (``FerConfig``), on the CPU."""
    weights = validated_config("fer", cfg)["weights"]
    return FaceExpressionModel(build_face_model(weights), _weights_hash(weights))
