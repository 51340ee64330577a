"""Model loading: the model a ``model`` config names, as its input contract
(``input_spec``) or as a built network (``build_emotion_model``, from a checkpoint or by
name), and the face detector a ``detector`` config names (``build_detector_from_config``).

``emotion.models.registry`` maps model names to builders and spec functions and
``emotion.checkpoint`` reads and writes checkpoint files; this module joins the two, so
neither imports the other. ``emotion.checkpoint`` (and with it torch) is imported only
where a checkpoint is read: checking a config before Ray starts needs only its names.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from emotion.devices import resolve_device
from emotion.models.protocol import EmotionModel, InputSpec, model_id
from emotion.models.registry import build_model, get_spec_builder
from emotion.models.settings import network_config, yaml_config
from emotion.settings import DetectorSettings

# Saved config keys that would read weights from elsewhere (see load_model_from_checkpoint).
_LOAD_WITHOUT = ("pretrained", "prototypes_from_text")


def checkpoint_of(cfg: Mapping[str, Any]) -> str | None:
    """The checkpoint a ``model`` config names, or None; a required one left unset
    (Hydra's ``???``) is an error saying what to pass."""
    checkpoint = cfg.get("checkpoint")
    if checkpoint == "???":
        raise ValueError(f"model={cfg.get('name')} has no shipped weights: pass model.checkpoint=PATH "
                         "(a checkpoint from `emotion train`)")
    return str(checkpoint) if checkpoint else None


def input_spec(cfg: Mapping[str, Any]) -> InputSpec:
    """The ``InputSpec`` of the model a ``model`` config names: from ``cfg.checkpoint``
    (its saved config and file hash; the weights are read, no network is built) or from
    ``cfg.name``."""
    checkpoint = checkpoint_of(cfg)
    if checkpoint:
        from emotion.checkpoint import load_checkpoint

        ckpt = load_checkpoint(checkpoint)
        return get_spec_builder(ckpt["model_name"])(saved_config(ckpt), checkpoint_hash=ckpt["sha256"])
    return get_spec_builder(cfg["name"])(network_config(cfg))


def saved_config(ckpt: Mapping[str, Any]) -> dict[str, Any]:
    """A checkpoint's model config, whole: keys its family gained after the checkpoint was
    written take the values of the family's YAML (``jobs/configs/model/<name>.yaml``), and
    ``labels`` are the checkpoint's where the config has none."""
    saved = dict(ckpt["model_cfg"])
    if not saved.get("labels"):
        saved["labels"] = list(ckpt["labels"])
    return yaml_config(ckpt["model_name"], saved)


def without_pretrained(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``cfg`` with ``pretrained`` and ``prototypes_from_text`` False where it has them: a
    network whose every weight a checkpoint brings reads no pretrained file or text encoder."""
    return {**cfg, **{key: False for key in _LOAD_WITHOUT if key in cfg}}


def spec_of(model: EmotionModel) -> InputSpec:
    """The input contract of a built model (no second read of its checkpoint)."""
    return InputSpec(name=model.name, levels=tuple(model.input_levels), input_size=int(model.input_size),
                     labels=tuple(model.labels), multi_label=bool(model.multi_label),
                     model_id=model_id(model.name, model.checkpoint_hash),
                     finds_people=bool(getattr(model, "finds_people", False)))


def load_model_from_checkpoint(path: str | os.PathLike, device: Any = "cpu", s3: Any = None) -> EmotionModel:
    """Rebuild the model a checkpoint names (via the registry), load its weights strictly,
    put it in eval mode on ``device`` and set ``checkpoint_hash`` to the file's SHA-256.

    Config keys ``pretrained`` and ``prototypes_from_text``, where the saved config has
    them, are set to False: every weight (CocoER's class prototypes included) comes from
    the checkpoint, and no pretrained file or text encoder is read.
    """
    from emotion.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path, s3=s3)
    model = build_model(ckpt["model_name"], without_pretrained(saved_config(ckpt)))
    model.load_state_dict(ckpt["state_dict"], strict=True)
    model.checkpoint_hash = ckpt["sha256"]
    return model.to(device).eval()


def build_emotion_model(cfg: Mapping[str, Any]) -> EmotionModel:
    """A model from ``cfg.checkpoint`` (any registered family) or by ``cfg.name``, on
    ``cfg.device`` (``auto``: CUDA when this machine has it)."""
    device = resolve_device(cfg["device"])
    checkpoint = checkpoint_of(cfg)
    if checkpoint:
        return load_model_from_checkpoint(checkpoint, device=device)
    return build_model(cfg["name"], network_config(cfg)).to(device)


def build_detector_from_config(settings: DetectorSettings) -> Any:
    """The detector the ``detector`` group names: ``retinaface``, or ``full_frame`` (each
    image is one face: the whole image, or, with ``find_face``, the face RetinaFace finds in it)."""
    from emotion.models.detection.retinaface import build_detector

    if settings.name == "full_frame":
        from emotion.models.detection.full_frame import FullFrameDetector

        return FullFrameDetector(build_detector(settings.finder) if settings.find_face else None)
    return build_detector(settings)
