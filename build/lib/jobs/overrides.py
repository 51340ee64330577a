"""Check a job's command-line overrides before Hydra runs the job.

Hydra reports an unknown key or a missing group option in several lines and exits 1; a
user's mistake should read as one line naming the key, and exit 2 like every other
config mistake (``emotion.settings``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
# Hydra's own flags (help, config printing, multirun, ...): leave those to Hydra.
_HYDRA_FLAGS = ("-", "hydra.", "hydra/")


def override_error(config_name: str, overrides: Sequence[str]) -> str | None:
    """One line saying what is wrong with ``overrides``, or None if they compose."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if any(arg.startswith(_HYDRA_FLAGS) for arg in overrides):
        return None
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            compose(config_name=config_name, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as exc:
        return _one_line(str(exc))
    return None


def _one_line(message: str) -> str:
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    first = lines[0] if lines else message
    if first.startswith("Could not override"):
        key = first.split("'")[1]
        hint = next((line for line in lines if line.startswith("To append")), "")
        return f"bad config: {key}: unknown key ({hint[0].lower() + hint[1:]})" if hint else f"bad config: {key}: unknown key"
    if "Could not find" in first:
        options = []
        for line in lines[1:]:
            if line.startswith("Config search path"):
                break  # Hydra then lists its search path: not for the user
            if not line.startswith("Available"):
                options.append(line)
        return f"bad config: {first.split(': ', 1)[-1]}" + (f"; options: {', '.join(options)}" if options else "")
    return f"bad config: {' '.join(lines)}"


def exit_on_bad_overrides(config_name: str, overrides: Sequence[str]) -> None:
    error = override_error(config_name, overrides)
    if error is not None:
        print(error, file=sys.stderr)
        sys.exit(2)
