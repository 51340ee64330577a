"""CocoER, the joint head/body/context model: backbones -> cross-level attention ->
per-level heads, vocabulary-informed pseudo labels -> workspace competition and
coordination -> fusion. ``build_cocoer(cfg)`` builds it; ``emotion.models.registry``
knows it as ``"cocoer"``."""

from emotion.models.joint.cocoer import CocoER, build_cocoer

__all__ = ["CocoER", "build_cocoer"]
