"""Model registry: a name -> builder map, so configs and checkpoints name models by string.

A model module registers its builder with ``@register_model("name")``. ``MODEL_MODULES``
says which module registers each name, so ``build_model("fer")`` imports the one module
it needs on first use: callers never import a model module themselves, and a tagging
actor that runs the mini-Xception does not pay for importing DSCT (and through it
torchvision, about 2 s of CPU per process). ``list_models`` imports them all.

Loading a model from a config or a checkpoint is ``emotion.models.loading``.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping

Builder = Callable[[Mapping[str, Any]], Any]

# The module whose import registers each model name. Add yours here.
MODEL_MODULES: dict[str, str] = {
    "fer": "emotion.models.face.classifier",
    "cocoer": "emotion.models.joint.cocoer",
    "face_cnn": "emotion.models.face.cnn",
    "qcs": "emotion.models.face.qcs",
    "dsct": "emotion.models.dsct.model",
    "face_ensemble": "emotion.models.face.ensemble",
}

_REGISTRY: dict[str, Builder] = {}
_SPECS: dict[str, Callable[..., Any]] = {}


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


def register_spec(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: ``@register_spec("fer") def fer_input_spec(cfg, checkpoint_hash=...)``
    -> ``InputSpec``, derived from the config alone (no network is built)."""

    def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
        _SPECS[name] = fn
        return fn

    return decorator


def get_spec_builder(name: str) -> Callable[..., Any]:
    """The spec function ``register_spec`` registered for model ``name``."""
    _import_module_of(name)
    try:
        return _SPECS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; registered models: {list_models()}") from None


def _import_module_of(name: str) -> None:
    """Import the module that registers ``name``, if ``MODEL_MODULES`` lists one (a model
    registered elsewhere, e.g. by a test, is already in the registry). An unknown name's
    error lists every model through ``list_models``."""
    module = MODEL_MODULES.get(name)
    if module is not None:
        importlib.import_module(module)  # a dictionary lookup once imported


def _import_model_modules() -> None:
    for module in MODEL_MODULES.values():
        importlib.import_module(module)


def list_models() -> list[str]:
    """Registered model names, sorted."""
    _import_model_modules()
    return sorted(_REGISTRY)


def get_builder(name: str) -> Builder:
    _import_module_of(name)
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; registered models: {list_models()}") from None


def build_model(name: str, cfg: Mapping[str, Any] | None = None) -> Any:
    """Build registered model ``name`` from a plain mapping (or OmegaConf DictConfig)."""
    return get_builder(name)(cfg or {})
