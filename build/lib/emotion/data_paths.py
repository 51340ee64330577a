"""Where the optional shared research data lives (never copied into the project)."""

from __future__ import annotations

import os
from pathlib import Path

_PROJECT_ROOT = Path(__file__).resolve().parents[1]


def fer2013_root() -> Path | None:
    """FER2013 image folders: ``$EMOTION_FER2013`` or ``../shared/data/fer2013`` beside the
    project; None when neither exists."""
    candidates = [os.environ.get("EMOTION_FER2013"), _PROJECT_ROOT.parent / "shared" / "data" / "fer2013"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "val").is_dir():
            return Path(candidate)
    return None
