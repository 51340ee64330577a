"""A model family's network config, checked where a network or its input contract is
built (``build_model``, the spec functions): by the family's config class
(``emotion.models.settings``), with one line naming a bad key as a job's config check
gives it (``emotion.settings.parse_settings``)."""

from __future__ import annotations

from typing import Any, Mapping

from emotion.models.protocol import plain_config
from emotion.models.settings import settings_class
from emotion.settings import parse_settings


def validated_config(name: str, cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``cfg`` checked by family ``name``'s config class (every key given, none unknown),
    as plain values; a bad key raises ``emotion.settings.ConfigError`` naming it. A
    network needs its ``labels``."""
    config = parse_settings(settings_class(name).config_class, plain_config(dict(cfg)), prefix="model").model_dump()
    if "labels" in config and not config["labels"]:
        raise ValueError(f"{name} needs `labels`: class names in score order (the trainer takes them from the "
                         "dataset)")
    return config
