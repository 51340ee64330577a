"""Model registry: a name -> builder map, so configs and checkpoints name models by string.

A model module registers its builder with ``@register_model("name")``; ``build_model``
imports the modules listed in ``MODEL_MODULES`` on first use, so callers never need to
import a model module themselves, and this file imports none of them up front.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping

Builder = Callable[[Mapping[str, Any]], Any]

# Modules whose import registers models. Add yours here.
MODEL_MODULES: list[str] = [
    "emotion.models.face.classifier",
    "emotion.models.joint.cocoer",
    "emotion.models.face.cnn",
]

_REGISTRY: dict[str, Builder] = {}
_imported = False


def register_model(name: str) -> Callable[[Builder], Builder]:
    """Decorator: ``@register_model("cocoer") def build_cocoer(cfg): ...``."""

    def decorator(builder: Builder) -> Builder:
        existing = _REGISTRY.get(name)
        same = existing is not None and (existing.__module__, existing.__qualname__) == (
            builder.__module__, builder.__qualname__)  # re-import of the same module: fine
        if existing is not None and not same:
            raise ValueError(f"model name {name!r} is already registered by "
                             f"{existing.__module__}.{existing.__qualname__}")
        _REGISTRY[name] = builder
        return builder

    return decorator


def _import_model_modules() -> None:
    global _imported
    if _imported:
        return
    for module in MODEL_MODULES:
        importlib.import_module(module)
    _imported = True


def list_models() -> list[str]:
    """Registered model names, sorted."""
    _import_model_modules()
    return sorted(_REGISTRY)


def get_builder(name: str) -> Builder:
    _import_model_modules()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; registered models: {sorted(_REGISTRY)}") from None


def build_model(name: str, cfg: Mapping[str, Any] | None = None) -> Any:
    """Build registered model ``name`` from a plain mapping (or OmegaConf DictConfig)."""
    return get_builder(name)(cfg or {})
