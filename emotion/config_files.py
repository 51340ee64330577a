"""The jobs' YAML configs (``jobs/configs``), read as files.

A config group option's YAML holds every default of that option. The library reads it
where a value comes from elsewhere and may lack a key: a checkpoint's saved model config
lacks the keys its family gained after the checkpoint was written
(``emotion.models.loading``). The files are installed beside the ``emotion`` package
(package data of ``jobs``); the library never imports the ``jobs`` package itself.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).resolve().parent.parent / "jobs" / "configs"


def group_option(group: str, option: str) -> dict[str, Any]:
    """The keys of ``jobs/configs/<group>/<option>.yaml`` (interpolations left as written: ``${...}`` stays text)."""
    return copy.deepcopy(_read(str(CONFIG_DIR / group / f"{option}.yaml")))


@functools.lru_cache(maxsize=None)
def _read(path: str) -> dict[str, Any]:
    # PyYAML, not OmegaConf: the library path (loading a model) runs without Hydra's stack.
    import yaml

    if not Path(path).is_file():
        raise FileNotFoundError(f"no config file {path}")
    with open(path) as handle:
        return yaml.safe_load(handle) or {}
