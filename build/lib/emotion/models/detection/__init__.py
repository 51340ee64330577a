"""Detectors: find faces (and, from them, bodies) in a batch of images."""

from emotion.models.detection.retinaface import FaceDetector, RetinaFace, build_detector

__all__ = ["FaceDetector", "RetinaFace", "build_detector"]
