"""The one predictor used by Ray Data (tagging), Ray Serve and the Python API.

Two steps, which Ray Data runs in separate actor pools and Serve runs back to back:

* ``detect``: a batch of decoded images -> one row per person (face and body boxes,
  detector score, and the crops the emotion model needs), or one row per image with no
  person or with an error;
* ``recognize``: those rows -> a ``pyarrow.Table`` in the output schema
  (``emotion.schema.output_schema``).

Batches are dicts of numpy arrays; per-image Python objects appear only where images of
different sizes must (the ``image`` column is an object array of [H, W, 3] uint8).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa

from emotion.boxes import body_box_from_face
from emotion.crops import context_window, crop_resize, square_box
from emotion.images import ImageDecodeError, decode_image, resize_max_side
from emotion.models.protocol import EmotionModel
from emotion.schema import LEVEL_NAMES, image_id_for, output_schema


def has_error(value: object) -> bool:
    """Error cells are non-empty strings; "" / None / NaN (after Arrow round trips) mean none."""
    return isinstance(value, str) and value != ""


@dataclass(frozen=True)
class CropConfig:
    head_expand: float = 1.25  # margin around the detector's tight face box, as FER crops have
    max_people: int = 20  # per image, highest detector scores first


def decode_one(data: bytes | None, max_side: int, max_pixels: int) -> tuple[np.ndarray, float, int, int]:
    """Bytes -> (working pixels shrunk to ``max_side``, scale back to the original,
    original height, original width). Raises ``ImageDecodeError`` only."""
    decoded = decode_image(data or b"", max_pixels=max_pixels)
    pixels, scale = resize_max_side(decoded.pixels, max_side)
    return pixels, scale, decoded.original_height, decoded.original_width


class DecodedBatch:
    """Builds the batch ``detect`` takes, one image at a time, so a reader can drop each
    file's bytes as soon as it is decoded (memory per batch is then bounded by the
    decoded images, not by the files' sizes)."""

    def __init__(self) -> None:
        self.sources: list[str] = []
        self.source_bytes: list[bytes] = []
        self.images: list[np.ndarray] = []
        self.scale: list[float] = []
        self.heights: list[int] = []
        self.widths: list[int] = []
        self.errors: list[str] = []

    def add(self, source: str, data: bytes | None, max_side: int, max_pixels: int, *,
            source_bytes: bytes = b"", error: str | None = None) -> None:
        """Decode ``data`` (unless ``error`` already says why there is none) and append it;
        a failure becomes the image's error."""
        pixels, scale, height, width = _PLACEHOLDER, 1.0, 0, 0
        if error is None:
            try:
                pixels, scale, height, width = decode_one(data, max_side, max_pixels)
            except ImageDecodeError as exc:
                error = str(exc)
        self.sources.append(source)
        self.source_bytes.append(source_bytes)
        self.images.append(pixels)
        self.scale.append(scale)
        self.heights.append(height)
        self.widths.append(width)
        # "" means no error: an all-None column would not survive Arrow conversion as strings.
        self.errors.append(error or "")

    def to_batch(self) -> dict[str, np.ndarray]:
        images = np.empty(len(self.images), dtype=object)
        images[:] = self.images  # ragged [H, W, 3] arrays: an object column
        return {
            "source": np.asarray(self.sources, dtype=object),
            "source_bytes": np.asarray(self.source_bytes, dtype=object),
            "image": images,
            "scale": np.asarray(self.scale, dtype=np.float32),
            "image_height": np.asarray(self.heights, dtype=np.int32),
            "image_width": np.asarray(self.widths, dtype=np.int32),
            "error": np.asarray(self.errors, dtype=object),
        }


# A failed image's pixels: keeps the image column rectangular in rank.
_PLACEHOLDER = np.zeros((1, 1, 3), dtype=np.uint8)


def decode_batch(sources: Sequence[str], payloads: Sequence[bytes | None], max_side: int,
                 max_pixels: int, read_errors: Sequence[str | None] | None = None) -> dict[str, np.ndarray]:
    """Decode raw bytes into the batch ``detect`` takes; failures become error rows."""
    batch = DecodedBatch()
    for i, (source, data) in enumerate(zip(sources, payloads)):
        batch.add(source, data, max_side, max_pixels, error=read_errors[i] if read_errors is not None else None)
    return batch.to_batch()


class EmotionPredictor:
    """Finds people and recognises each one's emotion.

    Args:
        detector: object with ``detect(list of RGB uint8 arrays) -> list of dicts`` holding
            ``boxes`` [n,4], ``scores`` [n] (working-image pixels). None if only
            ``recognize`` is used.
        model: an ``EmotionModel``. None if only ``detect`` is used.
        threshold: score above which a category is listed in ``emotions`` (multi-label
            models); single-label models list their top category.
    """

    def __init__(self, detector: Any | None, model: EmotionModel | None, *, threshold: float = 0.5,
                 crop: CropConfig = CropConfig(), levels: Sequence[str] | None = None,
                 input_size: int | None = None):
        self.detector = detector
        self.model = model
        self.threshold = threshold
        self.crop = crop
        # The detect step needs to know which crops to cut even when the model lives elsewhere.
        self.levels = tuple(levels if levels is not None else model.input_levels)
        self.input_size = int(input_size if input_size is not None else model.input_size)

    # -- step 1 -------------------------------------------------------------------------
    def detect(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Decoded images -> person rows. See ``decode_batch`` for the input columns."""
        ok = [i for i, err in enumerate(batch["error"]) if not has_error(err)]
        detections = self.detector.detect([batch["image"][i] for i in ok]) if ok else []
        found = dict(zip(ok, detections))
        rows: dict[str, list] = {k: [] for k in (
            "source", "source_bytes", "person_index", "rows_in_image", "face_box", "body_box", "detector_score",
            "image_height", "image_width", "error")}
        source_bytes = batch.get("source_bytes")
        crops: dict[str, list] = {level: [] for level in self.levels}
        size = self.input_size
        blank = np.zeros((size, size, 3), dtype=np.uint8)
        for i, source in enumerate(batch["source"]):
            pixels, scale = batch["image"][i], float(batch["scale"][i])
            det = found.get(i)
            n_people = 0 if det is None else min(len(det["scores"]), self.crop.max_people)
            if n_people:
                working_faces = det["boxes"][:n_people].astype(np.float32)
                working_bodies = body_box_from_face(working_faces, pixels.shape[:2])
                heads = square_box(working_faces, self.crop.head_expand)
                context = context_window(pixels, size) if "context" in self.levels else None
            for p in range(max(n_people, 1)):
                rows["source"].append(source)
                rows["source_bytes"].append(source_bytes[i] if source_bytes is not None else b"")
                rows["rows_in_image"].append(max(n_people, 1))
                rows["image_height"].append(batch["image_height"][i])
                rows["image_width"].append(batch["image_width"][i])
                rows["error"].append(batch["error"][i])
                if n_people == 0:
                    rows["person_index"].append(-1)
                    rows["face_box"].append(np.full(4, np.nan, np.float32))
                    rows["body_box"].append(np.full(4, np.nan, np.float32))
                    rows["detector_score"].append(np.nan)
                    for level in self.levels:
                        crops[level].append(blank)
                    continue
                rows["person_index"].append(p)
                rows["face_box"].append(working_faces[p] * scale)
                rows["body_box"].append(working_bodies[p] * scale)
                rows["detector_score"].append(det["scores"][p])
                for level in self.levels:
                    if level == "head":
                        crops[level].append(crop_resize(pixels, heads[p], size))
                    elif level == "body":
                        crops[level].append(crop_resize(pixels, working_bodies[p], size))
                    else:
                        crops[level].append(context)
        out = {
            "source": np.asarray(rows["source"], dtype=object),
            "source_bytes": np.asarray(rows["source_bytes"], dtype=object),
            "person_index": np.asarray(rows["person_index"], dtype=np.int32),
            # How many rows this image has: lets a consumer of a stream of rows, which
            # Ray Data may split anywhere, tell when it holds all of an image's rows.
            "rows_in_image": np.asarray(rows["rows_in_image"], dtype=np.int32),
            "face_box": np.asarray(rows["face_box"], dtype=np.float32).reshape(-1, 4),
            "body_box": np.asarray(rows["body_box"], dtype=np.float32).reshape(-1, 4),
            "detector_score": np.asarray(rows["detector_score"], dtype=np.float32),
            "image_height": np.asarray(rows["image_height"], dtype=np.int32),
            "image_width": np.asarray(rows["image_width"], dtype=np.int32),
            "error": np.asarray(rows["error"], dtype=object),
        }
        for level in self.levels:
            out[f"crop_{level}"] = np.stack(crops[level]).astype(np.uint8).reshape(-1, size, size, 3)
        return out

    # -- step 2 -------------------------------------------------------------------------
    def recognize(self, people: Mapping[str, np.ndarray]) -> pa.Table:
        """Person rows -> output table (one row per person / empty image / failed image)."""
        model = self.model
        labels = list(model.labels)
        k = len(labels)
        n = len(people["source"])
        has_person = np.asarray(people["person_index"]) >= 0
        idx = np.flatnonzero(has_person)
        scores = np.full((n, k), np.nan, dtype=np.float32)
        level_scores = np.full((n, len(LEVEL_NAMES), k), np.nan, dtype=np.float32)
        refined = np.zeros(n, dtype=bool)
        dropped: list[list[str] | None] = [None] * n
        vad = np.full((n, 3), np.nan, dtype=np.float32)
        if len(idx):
            out = model.predict({level: np.asarray(people[f"crop_{level}"])[idx] for level in model.input_levels})
            scores[idx] = out["scores"]
            if "level_scores" in out:
                names = list(out.get("level_names", LEVEL_NAMES))
                for j, name in enumerate(names):
                    level_scores[idx, LEVEL_NAMES.index(name)] = out["level_scores"][:, j]
            else:
                # A single-level model's scores are its head level.
                level_scores[idx, LEVEL_NAMES.index("head")] = out["scores"]
            if "refined" in out:
                refined[idx] = out["refined"]
            if "dropped_levels" in out:
                competing = ("head", "body", "context")
                for row, order in zip(idx, np.asarray(out["dropped_levels"])):
                    dropped[row] = [competing[int(j)] for j in order if int(j) >= 0]
            if "vad" in out:
                vad[idx] = out["vad"]
        emotions = [self._emotion_names(scores[r], labels) if has_person[r] else [] for r in range(n)]
        model_id = f"{model.name}@sha256:{model.checkpoint_hash[:16]}"
        return self._to_table(people, labels, model_id, scores, level_scores, refined, dropped, vad, emotions)

    def __call__(self, batch: Mapping[str, np.ndarray]) -> pa.Table:
        return self.recognize(self.detect(batch))

    def predict_bytes(self, sources: Sequence[str], payloads: Sequence[bytes], max_side: int = 1280,
                      max_pixels: int = 64_000_000) -> pa.Table:
        """Convenience for the Python API and Serve: raw image bytes -> output table."""
        return self(decode_batch(sources, payloads, max_side, max_pixels))

    # -- helpers ------------------------------------------------------------------------
    def _emotion_names(self, row: np.ndarray, labels: list[str]) -> list[str]:
        if self.model.multi_label:
            return [labels[j] for j in np.flatnonzero(row >= self.threshold)]
        return [labels[int(np.argmax(row))]]

    def output_schema(self) -> pa.Schema:
        model = self.model
        return output_schema(list(model.labels), f"{model.name}@sha256:{model.checkpoint_hash[:16]}")

    def _to_table(self, people, labels, model_id, scores, level_scores, refined, dropped, vad, emotions) -> pa.Table:
        n = len(people["source"])
        has_person = np.asarray(people["person_index"]) >= 0
        ok = np.array([not has_error(e) for e in people["error"]], dtype=bool)
        scored = has_person & ok

        def boxes(col: str) -> pa.Array:
            values = pa.array(np.asarray(people[col], dtype=np.float32).reshape(-1))
            return pa.FixedSizeListArray.from_arrays(values, 4, mask=pa.array(~has_person))

        def per_label(values: np.ndarray, mask: np.ndarray) -> pa.Array:
            flat = pa.array(np.ascontiguousarray(values, dtype=np.float32).reshape(-1))
            return pa.FixedSizeListArray.from_arrays(flat, len(labels), mask=pa.array(mask))

        level_arrays = []
        for j, _ in enumerate(LEVEL_NAMES):
            column = level_scores[:, j]
            level_arrays.append(per_label(column, ~scored | np.isnan(column).all(axis=1)))
        level_struct = pa.StructArray.from_arrays(level_arrays, names=list(LEVEL_NAMES), mask=pa.array(~scored))
        vad_missing = ~scored | np.isnan(vad).all(axis=1)
        vad_array = pa.FixedSizeListArray.from_arrays(pa.array(vad.reshape(-1)), 3, mask=pa.array(vad_missing))
        sources = [str(s) for s in people["source"]]
        raw_names = people.get("source_bytes")
        raw_names = [bytes(b) if b is not None and len(b) else None for b in raw_names] if raw_names is not None \
            else [None] * n
        schema = output_schema(labels, model_id)
        columns = {
            "image_id": pa.array([image_id_for(s, b) for s, b in zip(sources, raw_names)], pa.string()),
            "source": pa.array(sources, pa.string()),
            "source_bytes": pa.array(raw_names, pa.binary()),
            "person_index": pa.array(np.asarray(people["person_index"], dtype=np.int32), mask=~has_person),
            "face_box": boxes("face_box"),
            "body_box": boxes("body_box"),
            "detector_score": pa.array(np.asarray(people["detector_score"], dtype=np.float32), mask=~has_person),
            "emotions": pa.array(emotions, pa.list_(pa.string())),
            "scores": per_label(scores, ~scored),
            "level_scores": level_struct,
            "refined": pa.array(refined, pa.bool_()),
            "dropped_levels": pa.array(dropped, pa.list_(pa.string())),
            "vad": vad_array,
            "image_width": pa.array(np.asarray(people["image_width"], dtype=np.int32)),
            "image_height": pa.array(np.asarray(people["image_height"], dtype=np.int32)),
            "model": pa.array([model_id] * n, pa.string()),
            "error": pa.array([str(e) if has_error(e) else None for e in people["error"]], pa.string()),
        }
        return pa.table([columns[f.name] for f in schema], schema=schema)


# -- builders ---------------------------------------------------------------------------
def _resolve_device(device: str | None) -> str:
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def build_detector_from_config(cfg: Mapping) -> Any:
    """``cfg.name``: ``retinaface`` (default) or ``full_frame`` (pre-cropped faces)."""
    from emotion.models.detection.full_frame import build_full_frame_detector
    from emotion.models.detection.retinaface import build_detector

    builders = {"retinaface": build_detector, "full_frame": build_full_frame_detector}
    name = cfg.get("name", "retinaface")
    if name not in builders:
        raise ValueError(f"detector.name={name!r} is not one of {sorted(builders)}")
    return builders[name]({**cfg, "device": _resolve_device(cfg.get("device"))})


def build_emotion_model(cfg: Mapping) -> EmotionModel:
    """A model from ``cfg.checkpoint`` (any registered family) or by ``cfg.name``."""
    from emotion.models.registry import build_model

    device = _resolve_device(cfg.get("device"))
    if cfg.get("checkpoint"):
        from emotion.checkpoint import load_model_from_checkpoint

        return load_model_from_checkpoint(cfg["checkpoint"], device=device)
    return build_model(cfg["name"], {**cfg, "device": device})


def build_predictor(cfg: Mapping, *, detect: bool = True, recognize: bool = True,
                    levels: Sequence[str] | None = None, input_size: int | None = None) -> EmotionPredictor:
    """Build from a config with ``detector``, ``model`` and ``predictor`` sections.

    ``detect``/``recognize`` choose which parts to load (Ray Data runs them in separate
    actor pools); when the model is not loaded, ``levels`` and ``input_size`` say which
    crops the detect step cuts.
    """
    predictor_cfg = cfg.get("predictor", {}) or {}
    detector = build_detector_from_config(cfg["detector"]) if detect else None
    model = build_emotion_model(cfg["model"]) if recognize else None
    crop = CropConfig(
        # The margin around a face box depends on the detector's box convention.
        head_expand=float(cfg["detector"].get("head_expand", CropConfig.head_expand)),
        max_people=int(predictor_cfg.get("max_people", CropConfig.max_people)),
    )
    return EmotionPredictor(detector, model, threshold=float(predictor_cfg.get("threshold", 0.5)),
                            crop=crop, levels=levels, input_size=input_size)
