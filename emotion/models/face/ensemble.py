"""An output ensemble of face models: one ``EmotionModel`` whose scores are the mean of
its members' scores.

Models that learnt differently (one from FER+ alone, one from ImageNet on several face
datasets) make different mistakes; averaging their class probabilities keeps what each
does well (Dietterich, "Ensemble methods in machine learning", 2000; for face expression,
the winning entries of EmotiW and FER2013 were ensembles). Every member reads the same
crop (same levels, same ``input_size``) and scores the same labels, in the same order;
each keeps its own inference keys (a QCS member's ``test_flip``).

The ensemble is one checkpoint (``write_ensemble_checkpoint``): the members' configs in
its config (``members``: ``{"name", "config"}`` each) and their weights in one state dict
under ``members.<i>.``, so it loads, hashes and ships like any other model (one weights
name, one hash in every output row). Ensembles are built from trained checkpoints, not
trained themselves.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Sequence

import numpy as np
import torch.nn as nn

from emotion.models.config_check import validated_config
from emotion.models.protocol import InputSpec, model_id, single_level_columns
from emotion.models.registry import build_model, get_spec_builder, register_model, register_spec
from emotion.models.settings import yaml_config

NAME = "face_ensemble"


def resolve_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``cfg`` checked by ``FaceEnsembleConfig``; every member's config is completed from
    its family's YAML (keys its family gained after it was saved) and must agree with the
    others on the crop it reads and the labels it scores."""
    return _resolved(cfg)[0]


def _resolved(cfg: Mapping[str, Any]) -> tuple[dict[str, Any], InputSpec]:
    """``resolve_config``'s config and the input contract every member shares."""
    if cfg.get("members") is None:  # the YAML's null: only a checkpoint brings members
        raise ValueError("face_ensemble has no members: load an ensemble checkpoint (model.checkpoint=PATH, "
                         "written by `emotion ensemble`)")
    config = validated_config(NAME, cfg)
    members = [{"name": m["name"], "config": yaml_config(m["name"], m["config"])} for m in config["members"]]
    specs = [get_spec_builder(m["name"])(m["config"]) for m in members]
    first = specs[0]
    for index, spec in enumerate(specs[1:], start=1):
        if not spec.reads_like(first):
            raise ValueError(f"model.members[{index}] reads {spec.reading()}; members[0] reads {first.reading()}: "
                             "ensemble members must read the same crops and score the same labels")
    if config["labels"] is not None and tuple(config["labels"]) != first.labels:
        raise ValueError(f"model.labels {config['labels']} are not the members' {list(first.labels)}")
    return {**config, "members": members, "labels": list(first.labels)}, first


class FaceEnsemble(nn.Module):
    """The mean of its members' scores; an ``EmotionModel`` (see the module doc)."""

    name = NAME

    def __init__(self, cfg: Mapping[str, Any]):
        super().__init__()
        self.config = resolve_config(cfg)
        self.members = nn.ModuleList(build_model(m["name"], m["config"]) for m in self.config["members"])
        first = self.members[0]
        self.labels = tuple(first.labels)
        self.multi_label = bool(first.multi_label)
        self.input_levels = tuple(first.input_levels)
        self.input_size = int(first.input_size)
        self.checkpoint_hash = "untrained"

    def predict(self, crops: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """uint8 crops {level: [B, S, S, 3]} -> ``scores`` float32 [B, K], the mean of the
        members' ``scores``, and ``member_scores`` float32 [M, B, K]."""
        member_scores = np.stack([member.predict(crops)["scores"] for member in self.members])
        return {"scores": member_scores.mean(axis=0, dtype=np.float64).astype(np.float32),
                "member_scores": member_scores}

    def output_columns(self, outputs: dict[str, np.ndarray]) -> dict:
        return single_level_columns(outputs["scores"], self.input_levels[0])


@register_spec(NAME)
def face_ensemble_input_spec(cfg: Mapping[str, Any], checkpoint_hash: str = "untrained") -> InputSpec:
    return dataclasses.replace(_resolved(cfg)[1], name=NAME, model_id=model_id(NAME, checkpoint_hash))


@register_model(NAME)
def build_face_ensemble(cfg: Mapping[str, Any]) -> FaceEnsemble:
    """Build ``face_ensemble`` from its config (``FaceEnsembleConfig``) with untrained
    members; its weights come from its checkpoint (``write_ensemble_checkpoint``)."""
    return FaceEnsemble(cfg)


def write_ensemble_checkpoint(members: Sequence[str | os.PathLike], target: str | os.PathLike, *,
                              half: bool = True) -> str:
    """One checkpoint holding the ensemble of ``members`` (checkpoint paths, s3:// URIs or
    shipped weights names; each hash-checked where shipped): their configs, their weights
    (float16 with ``half``) and, in ``extra.members``, where each came from and its SHA-256.
    Returns ``target``."""
    from emotion.checkpoint import load_checkpoint, save_checkpoint
    from emotion.models.loading import saved_config, without_pretrained

    if len(members) < 2:
        raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
    configs, state, sources = [], {}, []
    for index, member in enumerate(members):
        ckpt = load_checkpoint(member)
        if ckpt["model_name"] == NAME:
            raise ValueError(f"member {member} is itself an ensemble: list its members instead")
        configs.append({"name": ckpt["model_name"], "config": without_pretrained(saved_config(ckpt))})
        for key, tensor in ckpt["state_dict"].items():
            state[f"members.{index}.{key}"] = tensor.half() if half and tensor.is_floating_point() else tensor
        sources.append({"checkpoint": str(member), "sha256": ckpt["sha256"]})
    model_cfg = {"members": configs, "labels": list(configs[0]["config"]["labels"])}
    labels = resolve_config(model_cfg)["labels"]  # every member reads the same crops over the same labels
    return save_checkpoint(target, model_name=NAME, model_cfg=model_cfg, state_dict=state, labels=labels,
                           extra={"members": sources, "stored_dtype": "float16" if half else "float32"})
