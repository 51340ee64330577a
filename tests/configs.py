"""Settings for tests, taken from the jobs' YAML (``jobs/configs``), which holds every
default: a test states only what it changes."""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from tests.conftest import PROJECT_ROOT

CONFIG_DIR = str(PROJECT_ROOT / "jobs" / "configs")


def compose_config(config_name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """A job's config as the command line composes it."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))


def composed(config_name: str, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """``compose_config`` resolved to plain data."""
    return OmegaConf.to_container(compose_config(config_name, overrides), resolve=True)


@functools.lru_cache(maxsize=None)
def _default(config_name: str) -> dict[str, Any]:
    return composed(config_name, ["data.root=/data"] if config_name in ("train", "eval") else [])


def default_section(config_name: str, section: str) -> dict[str, Any]:
    """A copy of one section of a job's default config (e.g. ``("serve", "serve")``)."""
    return copy.deepcopy(_default(config_name)[section])


def merged(base: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes`` laid over it, nested mappings key by key."""
    out = dict(base)
    for key, value in changes.items():
        nested = isinstance(value, Mapping) and isinstance(out.get(key), Mapping)
        out[key] = merged(out[key], value) if nested else value
    return out


def loop_settings(**changes: Any):
    """The ``train`` group's settings (``LoopSettings``) with ``changes``, validated."""
    from emotion.settings import LoopSettings

    return LoopSettings.model_validate(merged(default_section("train", "train"), changes))


def dsct_settings(**changes: Any):
    """The ``train.dsct`` settings (``DSCTTrainSettings``) with ``changes`` (nested mappings merged)."""
    return loop_settings(dsct=changes).dsct


def augment_settings(**changes: Any):
    """The ``train.augment`` settings (``AugmentSettings``) with ``changes``, validated."""
    from emotion.settings import AugmentSettings

    return AugmentSettings.model_validate({**default_section("train", "train")["augment"], **changes})


# Every augmentation off: augment() is then the identity up to resampling error.
NO_AUGMENT = dict(flip=False, max_rotation_deg=0, min_scale=1.0, max_shift=0, brightness=0, contrast=0)


def retinaface_settings(**changes: Any):
    """The ``detector=retinaface`` settings with ``changes``, validated."""
    from emotion.config_files import group_option
    from emotion.settings import RetinaFaceSettings

    return RetinaFaceSettings.model_validate({**group_option("detector", "retinaface"), **changes})


def full_frame_detector(**changes: Any) -> dict[str, Any]:
    """The ``detector=full_frame`` section as a job composes it (its finder included), with ``changes``."""
    return {**composed("tag", ["detector=full_frame"])["detector"], **changes}


def _command_values(config_name: str) -> dict[str, Any]:
    """A data command's YAML values, without Hydra's keys and the paths."""
    values = yaml.safe_load((Path(CONFIG_DIR) / f"{config_name}.yaml").read_text())
    return {k: v for k, v in values.items() if k not in ("defaults", "hydra", "root", "faces")}


def synth_options(**changes: Any) -> dict[str, Any]:
    """Keyword arguments of ``generate_synthetic_emotic``: ``data_synth.yaml``'s values
    (``image_size`` as (side, side)) with ``changes``."""
    values = _command_values("data_synth")
    values["image_size"] = (values["image_size"], values["image_size"])
    return {**values, **changes}


def scenes_v2_options(**changes: Any) -> dict[str, Any]:
    """Keyword arguments of ``generate_scenes_v2``: ``data_scenes_v2.yaml``'s values
    (``image_size`` as (side, side), the parameters as ``ScenesV2Params``) with ``changes``."""
    from emotion.data.synthetic.scenes_v2 import params_from_config

    values = _command_values("data_scenes_v2")
    options = {key: values[key] for key in ("n_train", "n_val", "n_test", "seed", "jpeg_quality")}
    options.update(image_size=(values["image_size"], values["image_size"]), params=params_from_config(values))
    return {**options, **changes}


def serve_section(**changes: Any) -> dict[str, Any]:
    """The default ``serve`` section with ``changes`` (nested mappings merged)."""
    return merged(default_section("serve", "serve"), changes)


def data_settings(option: str, **changes: Any):
    """The ``data=<option>`` group's settings (a ``DataSettings`` member) with ``changes``."""
    from pydantic import TypeAdapter

    from emotion.settings import DataSettings

    section = composed("eval", [f"data={option}", "data.root=/data"])["data"]
    return TypeAdapter(DataSettings).validate_python(merged(section, changes))
