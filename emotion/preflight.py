"""Checks a job runs on its parsed settings before Ray starts, so that a mistake costs
seconds, not a cluster start or hours of work: the folders it writes can be created
(locally, or the bucket exists on S3) and the checkpoint its model names exists. Each
raises ``ConfigError`` (or ``storage.StorageError`` for S3) with one line naming the key.
"""

from __future__ import annotations

import os

from emotion import storage
from emotion.models.loading import checkpoint_of, input_spec
from emotion.score_weights import weight_vector
from emotion.settings import ConfigError, ModelSettings, PredictorConfig, TagSettings, TrainSettings
from emotion.weights import KNOWN_WEIGHTS


def check_tag_settings(settings: TagSettings) -> None:
    """The tagging job's output folder, its model's checkpoint and score weights, and the
    ``annotate`` folder (a bad one must fail at the start, not after hours of tagging)."""
    check_output_location(settings.output)
    check_model_checkpoint(settings.model)
    check_score_weights(settings)
    if settings.annotate:
        check_output_location(settings.annotate, key="annotate")


def check_score_weights(settings: PredictorConfig) -> None:
    """Raise before Ray starts if ``predictor.score_weights`` names a class the model does
    not score, or weights a multi-label model. Reads the model's checkpoint for its labels,
    so only when weights are set."""
    if not settings.predictor.score_weights:
        return
    spec = input_spec(settings.model.model_dump())
    try:
        weight_vector(settings.predictor.score_weights, spec.labels, multi_label=spec.multi_label)
    except ValueError as exc:
        raise ConfigError(f"bad config: {exc}") from None


def check_train_settings(settings: TrainSettings) -> None:
    """The training job's output folder."""
    check_output_location(settings.output)


def check_model_checkpoint(model: ModelSettings, key: str = "model.checkpoint") -> None:
    """Raise before Ray starts if the checkpoint the model config names is missing: a
    required one left unset, a local path that is not a file, an s3:// object that does
    not exist. Reading it (format, hash) is left to the job, which does it while Ray starts."""
    try:
        checkpoint = checkpoint_of(model.model_dump())  # a required one left unset raises
    except ValueError as exc:
        raise ConfigError(f"bad config: {key}: {exc}") from None
    if checkpoint is None or checkpoint in KNOWN_WEIGHTS:
        return
    if storage.is_s3(checkpoint):
        try:
            found = storage.exists(checkpoint)
        except storage.StorageError as exc:  # missing bucket or credentials: one line naming the key
            raise storage.StorageError(f"{key}={checkpoint!r}: {exc}") from None
    else:
        found = os.path.isfile(os.path.expanduser(checkpoint))
    if not found:
        raise ConfigError(f"bad config: {key}={checkpoint!r}: no such file")


def check_output_location(output: str, key: str = "output") -> None:
    """Raise before Ray starts if ``output`` (the config's ``key``) cannot be a
    writable folder; the message names the key."""
    if storage.is_s3(output):
        storage.split_s3(output)  # malformed URIs raise ValueError
        try:
            storage.check_bucket(output)
        except storage.StorageError as exc:  # missing bucket or credentials: one line naming the key
            raise storage.StorageError(f"{key}={output!r}: {exc}") from None
        return
    path = os.path.abspath(os.path.expanduser(output))
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"bad config: {key}={output!r}: is a file; give a folder (it is created if missing)")
    parent = path
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ConfigError(f"bad config: {key}={output!r}: {parent} is a file, so the folder cannot be created")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"bad config: {key}={output!r}: {parent} is not writable")
