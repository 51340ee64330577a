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

from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa

from emotion.boxes import body_box_from_face
from emotion.crops import CropSpec, head_crops, person_crops
from emotion.images import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image, resize_max_side
from emotion.models.protocol import EmotionModel, InputSpec, single_level_columns
from emotion.schema import LEVEL_NAMES, image_id_for, output_schema


def has_error(value: object) -> bool:
    """Error cells are non-empty strings; "" / None / NaN (after Arrow round trips) mean none."""
    return isinstance(value, str) and value != ""


def decode_one(data: bytes | None, max_side: int, max_pixels: int) -> tuple[np.ndarray, float, int, int]:
    """Bytes -> (working pixels shrunk to ``max_side``, scale back to the original,
    original height, original width). Raises ``ImageDecodeError`` only."""
    decoded = decode_image(data or b"", max_pixels=max_pixels, draft_side=max_side)
    pixels, _ = resize_max_side(decoded.pixels, max_side)
    # From the full-size original: a draft-mode decode already shrank the pixels.
    original_longer = max(decoded.original_height, decoded.original_width)
    scale = original_longer / max(pixels.shape[:2]) if original_longer != max(pixels.shape[:2]) else 1.0
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
        self.append(source, pixels, scale, height, width, source_bytes=source_bytes, error=error)

    def append(self, source: str, pixels: np.ndarray, scale: float, height: int, width: int, *,
               source_bytes: bytes = b"", error: str | None = None) -> None:
        """Append an image decoded elsewhere (``decode_one``'s four values)."""
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
                 max_pixels: int, read_errors: Sequence[str | None] | None = None,
                 device: Any | None = None) -> dict[str, np.ndarray]:
    """Decode raw bytes into the batch ``detect`` takes; failures become error rows.

    ``device`` (a torch device, CUDA or CPU): JPEGs are decoded there in one batched
    ``decode_jpeg`` call, turned upright and shrunk there (``emotion.device_decode``);
    every other file, and any the device fails on, takes the Pillow path (``decode_one``).
    None (the default): Pillow for every file.
    """
    errors = list(read_errors) if read_errors is not None else [None] * len(sources)
    done: list[tuple[np.ndarray, float, int, int] | None] = [None] * len(sources)
    if device is not None:
        from emotion.device_decode import decode_on_device

        wanted = [i for i, err in enumerate(errors) if err is None]
        for i, result in zip(wanted, decode_on_device([payloads[i] for i in wanted], max_side, max_pixels, device)):
            done[i] = result
    batch = DecodedBatch()
    for i, (source, data) in enumerate(zip(sources, payloads)):
        if done[i] is not None:
            batch.append(source, *done[i])
        else:
            batch.add(source, data, max_side, max_pixels, error=errors[i])
    return batch.to_batch()


class EmotionPredictor:
    """Finds people and recognises each one's emotion.

    Args:
        detector: object with ``detect(list of RGB uint8 arrays) -> list of dicts`` holding
            ``boxes`` [n,4], ``scores`` [n] (working-image pixels). None if only
            ``recognize`` is used.
        model: an ``EmotionModel``. None if only ``detect`` is used.
        spec: the model's input contract (``emotion.models.registry.input_spec``), known
            even where the model is not loaded (the detect actors, the tagging driver).
        crop: how crops are cut, ``max_side`` included (``emotion.crops.CropSpec``).
        threshold: score above which a category is listed in ``emotions`` (multi-label
            models); single-label models list their top category.
        max_people: per image, highest detector scores first.
        crops: where crops are cut (``predictor.crops``): ``pil`` (``emotion.crops``, on
            the host), ``device`` (``emotion.device_crops``: the same crops within one grey
            level, cut where ``device`` is), ``auto`` (``device`` on CUDA, else ``pil``).
        decode: how ``decode`` reads bytes (``predictor.decode``): ``pil``, ``device``
            (JPEGs through ``torchvision.io.decode_jpeg`` on ``device``,
            ``emotion.device_decode``), ``auto`` (``device`` on CUDA, else ``pil``).
        precision: ``fp32``, ``fp16`` (CUDA only) or ``bf16`` (``predictor.precision``):
            autocast around the detector's and the model's forward (``emotion.precision``).
        device: where device crops and decoding run; default the detector's device, else
            the model's, else CPU.
        person_threshold: for a single-stage model (``spec.finds_people``, DSCT): the
            least person score a found person needs. Such a model replaces the detector:
            ``detect`` calls its ``find_people`` on the whole images, rows get its body
            boxes (no face box) and its emotion scores (``person_scores``), and
            ``recognize`` only places them; no crops are cut.
    """

    def __init__(self, detector: Any | None, model: EmotionModel | None, *, spec: InputSpec, crop: CropSpec,
                 threshold: float, max_people: int, crops: str = "pil", decode: str = "pil",
                 precision: str = "fp32", device: Any | None = None, person_threshold: float = 0.5):
        from emotion.precision import PRECISIONS, check_precision

        self.detector = detector
        self.model = model
        self.spec = spec
        self.crop = crop
        self.threshold = threshold
        self.max_people = max_people
        self.person_threshold = float(person_threshold)  # single-stage models: least person score kept
        self.detector_device = _device_of(detector)
        self.model_device = _device_of(model)
        self.device = str(device) if device is not None else (self.detector_device or self.model_device or "cpu")
        on_cuda = self.device.startswith("cuda")
        self.crop_mode = _resolve_mode("predictor.crops", crops, on_cuda)
        self.decode_mode = _resolve_mode("predictor.decode", decode, on_cuda)
        for network, where in ((self.detector_device, "the detector"), (self.model_device, "the model")):
            if network is not None:
                check_precision(precision, network, where)
        if precision not in PRECISIONS:
            raise ValueError(f"predictor.precision={precision!r} is not one of {list(PRECISIONS)}")
        self.precision = precision

    @property
    def levels(self) -> tuple[str, ...]:
        return self.spec.levels

    @property
    def input_size(self) -> int:
        return self.spec.input_size

    # -- step 0 -------------------------------------------------------------------------
    def decode(self, sources: Sequence[str], payloads: Sequence[bytes | None], max_pixels: int = DEFAULT_MAX_PIXELS,
               read_errors: Sequence[str | None] | None = None) -> dict[str, np.ndarray]:
        """Image bytes -> the batch ``detect`` takes, shrunk to this predictor's ``max_side``
        (JPEGs decoded on the device with ``decode=device``)."""
        return decode_batch(sources, payloads, self.crop.max_side, max_pixels, read_errors,
                            device=self.device if self.decode_mode == "device" else None)

    # -- step 1 -------------------------------------------------------------------------
    def detect(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Decoded images -> person rows. See ``decode_batch`` for the input columns.

        Every row carries ``image_index`` (its image's position in ``batch``) and
        ``rows_in_image``, so no consumer infers image boundaries from row order.
        """
        from emotion.precision import autocast

        ok = [i for i, err in enumerate(batch["error"]) if not has_error(err)]
        if self.spec.finds_people:
            return self._detect_single_stage(batch, ok)
        with autocast(self.detector_device, self.precision):
            detections = self.detector.detect([batch["image"][i] for i in ok]) if ok else []
        found = dict(zip(ok, detections))
        size = self.input_size
        blank = np.zeros((1, size, size, 3), dtype=np.uint8)
        per_image: list[int] = []
        faces, bodies, scores = [], [], []
        people: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray | None]] = {}  # image -> working faces, bodies, landmarks
        for i in range(len(batch["source"])):
            pixels, scale = batch["image"][i], float(batch["scale"][i])
            det = found.get(i)
            n = 0 if det is None else min(len(det["scores"]), self.max_people)
            per_image.append(n)
            if n == 0:
                faces.append(np.full((1, 4), np.nan, np.float32))
                bodies.append(np.full((1, 4), np.nan, np.float32))
                scores.append(np.full(1, np.nan, np.float32))
                continue
            working_faces = det["boxes"][:n].astype(np.float32)
            working_bodies = body_box_from_face(working_faces, pixels.shape[:2])
            landmarks = det.get("landmarks")
            people[i] = (working_faces, working_bodies, None if landmarks is None else landmarks[:n])
            faces.append(working_faces * scale)
            bodies.append(working_bodies * scale)
            scores.append(np.asarray(det["scores"][:n], np.float32))
        cut = self._cut_crops(batch["image"], people)
        crops = {level: [cut[i][level] if i in cut else blank for i in range(len(per_image))]
                 for level in self.levels}
        out = self._rows(batch, per_image)
        out.update({
            "face_box": np.concatenate(faces).reshape(-1, 4) if faces else np.zeros((0, 4), np.float32),
            "body_box": np.concatenate(bodies).reshape(-1, 4) if bodies else np.zeros((0, 4), np.float32),
            "detector_score": np.concatenate(scores) if scores else np.zeros(0, np.float32),
        })
        for level in self.levels:
            out[f"crop_{level}"] = (np.concatenate(crops[level]) if crops[level]
                                    else np.zeros((0, size, size, 3), np.uint8)).astype(np.uint8)
        return out

    def _detect_single_stage(self, batch: Mapping[str, np.ndarray], ok: list[int]) -> dict[str, np.ndarray]:
        """``detect`` for a model that finds people itself: its boxes are body boxes (face
        boxes unknown), its scores ride along in ``person_scores`` [N, K] (NaN rows for
        images without people); no crop columns."""
        from emotion.precision import autocast

        with autocast(self.model_device, self.precision):
            found = self.model.find_people([batch["image"][i] for i in ok], self.person_threshold,
                                           self.max_people) if ok else []
        by_image = dict(zip(ok, found))
        k = len(self.spec.labels)
        per_image, bodies, scores, emotions = [], [], [], []
        for i in range(len(batch["source"])):
            det = by_image.get(i)
            n = 0 if det is None else len(det["scores"])
            per_image.append(n)
            if n == 0:
                bodies.append(np.full((1, 4), np.nan, np.float32))
                scores.append(np.full(1, np.nan, np.float32))
                emotions.append(np.full((1, k), np.nan, np.float32))
                continue
            bodies.append(np.asarray(det["boxes"], np.float32) * float(batch["scale"][i]))
            scores.append(np.asarray(det["scores"], np.float32))
            emotions.append(np.asarray(det["emotion_probs"], np.float32))
        out = self._rows(batch, per_image)
        out.update({
            "face_box": np.full((len(out["image_index"]), 4), np.nan, np.float32),
            "body_box": np.concatenate(bodies).reshape(-1, 4) if bodies else np.zeros((0, 4), np.float32),
            "detector_score": np.concatenate(scores) if scores else np.zeros(0, np.float32),
            "person_scores": np.concatenate(emotions).reshape(-1, k) if emotions else np.zeros((0, k), np.float32),
        })
        return out

    def _rows(self, batch: Mapping[str, np.ndarray], per_image: list[int]) -> dict[str, np.ndarray]:
        """The per-row columns every detect output has, for ``per_image`` people per image
        (an image without people keeps one row)."""
        rows_per_image = np.maximum(np.asarray(per_image, dtype=np.int32), 1)
        image_index = np.repeat(np.arange(len(per_image), dtype=np.int32), rows_per_image)
        person_index = np.concatenate([np.arange(n, dtype=np.int32) if n else np.full(1, -1, np.int32)
                                       for n in per_image]) if per_image else np.zeros(0, np.int32)
        source_bytes = batch.get("source_bytes")

        def repeat(column: str, dtype: Any) -> np.ndarray:
            return np.repeat(np.asarray(batch[column], dtype=dtype), rows_per_image)

        return {
            "image_index": image_index,
            "source": repeat("source", object),
            "source_bytes": np.repeat(np.asarray(source_bytes, dtype=object), rows_per_image)
            if source_bytes is not None else np.full(len(image_index), b"", dtype=object),
            "person_index": person_index,
            # How many rows this image has: lets a consumer of a stream of rows, which
            # Ray Data may split anywhere, tell when it holds all of an image's rows.
            "rows_in_image": np.repeat(rows_per_image, rows_per_image),
            "image_height": repeat("image_height", np.int32),
            "image_width": repeat("image_width", np.int32),
            "error": repeat("error", object),
        }

    def _cut_crops(self, images: np.ndarray, people: Mapping[int, tuple[np.ndarray, np.ndarray, np.ndarray | None]]
                   ) -> dict[int, dict[str, np.ndarray]]:
        """Image -> level -> uint8 [n, S, S, 3] numpy crops of its people (``crops`` mode).
        Aligned head crops (``CropSpec.align``, faces with landmarks) are cut on the host
        in either mode: the device cuts boxes only."""
        if self.crop_mode != "device" or not people:
            return {i: person_crops(images[i], f, b, self.crop, landmarks=m) for i, (f, b, m) in people.items()}
        from emotion.device_crops import batch_person_crops_on_device

        order = list(people)
        cut = batch_person_crops_on_device([images[i] for i in order], [people[i][0] for i in order],
                                           [people[i][1] for i in order], self.crop, device=self.device)
        # One transfer per level for the whole batch.
        out: dict[int, dict[str, np.ndarray]] = {i: {} for i in order}
        counts = np.cumsum([len(people[i][0]) for i in order])[:-1]
        import torch

        for level in self.levels:
            host = torch.cat([c[level] for c in cut]).cpu().numpy()
            for i, part in zip(order, np.split(host, counts)):
                out[i][level] = part
        if self.crop.align and "head" in self.levels:
            for i in order:
                faces, _, landmarks = people[i]
                if landmarks is not None and np.isfinite(landmarks).all(axis=(1, 2)).any():
                    out[i]["head"] = head_crops(images[i], faces, self.crop, landmarks)
        return out

    # -- step 2 -------------------------------------------------------------------------
    def recognize(self, people: Mapping[str, np.ndarray]) -> pa.Table:
        """Person rows -> output table (one row per person / empty image / failed image).

        The model turns its raw outputs into the columns it fills (``output_columns``);
        the predictor only places them in the schema.
        """
        model = self.model
        labels = list(self.spec.labels)
        k = len(labels)
        n = len(people["source"])
        has_person = np.asarray(people["person_index"]) >= 0
        idx = np.flatnonzero(has_person)
        scores = np.full((n, k), np.nan, dtype=np.float32)
        level_scores = np.full((n, len(LEVEL_NAMES), k), np.nan, dtype=np.float32)
        refined = np.zeros(n, dtype=bool)
        dropped: list[list[str] | None] = [None] * n
        if len(idx):
            from emotion.precision import autocast

            if "person_scores" in people:  # a single-stage model scored them while finding them
                columns = single_level_columns(np.asarray(people["person_scores"], np.float32)[idx], level="context")
            else:
                with autocast(self.model_device, self.precision):
                    raw = model.predict({level: np.asarray(people[f"crop_{level}"])[idx] for level in self.levels})
                columns = model.output_columns(raw)
            scores[idx] = columns["scores"]
            for name, values in columns["level_scores"].items():
                level_scores[idx, LEVEL_NAMES.index(name)] = values
            refined[idx] = columns["refined"]
            for row, names in zip(idx, columns["dropped_levels"]):
                dropped[row] = names
        emotions = [self._emotion_names(scores[r], labels) if has_person[r] else [] for r in range(n)]
        return self._to_table(people, labels, self.spec.model_id, scores, level_scores, refined, dropped, emotions)

    def __call__(self, batch: Mapping[str, np.ndarray]) -> pa.Table:
        return self.recognize(self.detect(batch))

    def predict_bytes(self, sources: Sequence[str], payloads: Sequence[bytes],
                      max_pixels: int = DEFAULT_MAX_PIXELS) -> pa.Table:
        """Raw image bytes -> output table (the Python API, Serve and eval)."""
        return self(self.decode(sources, payloads, max_pixels))

    def predict_images(self, sources: Sequence[str], payloads: Sequence[bytes],
                       max_pixels: int = DEFAULT_MAX_PIXELS) -> list[pa.Table]:
        """Raw image bytes -> one output table per image, in input order (grouped by the
        rows' ``image_index``, never by row order)."""
        people = self.detect(self.decode(sources, payloads, max_pixels))
        table = self.recognize(people)
        return split_rows(table, people["image_index"], len(sources))

    # -- helpers ------------------------------------------------------------------------
    def _emotion_names(self, row: np.ndarray, labels: list[str]) -> list[str]:
        if self.spec.multi_label:
            return [labels[j] for j in np.flatnonzero(row >= self.threshold)]
        return [labels[int(np.argmax(row))]]

    def output_schema(self) -> pa.Schema:
        return output_schema(list(self.spec.labels), self.spec.model_id)

    def _to_table(self, people, labels, model_id, scores, level_scores, refined, dropped, emotions) -> pa.Table:
        n = len(people["source"])
        has_person = np.asarray(people["person_index"]) >= 0
        ok = np.array([not has_error(e) for e in people["error"]], dtype=bool)
        scored = has_person & ok

        def boxes(col: str) -> pa.Array:  # null where unknown (no person, or a box the model does not give)
            array = np.asarray(people[col], dtype=np.float32).reshape(-1, 4)
            unknown = ~has_person | np.isnan(array).any(axis=1)
            return pa.FixedSizeListArray.from_arrays(pa.array(array.reshape(-1)), 4, mask=pa.array(unknown))

        def per_label(values: np.ndarray, mask: np.ndarray) -> pa.Array:
            flat = pa.array(np.ascontiguousarray(values, dtype=np.float32).reshape(-1))
            return pa.FixedSizeListArray.from_arrays(flat, len(labels), mask=pa.array(mask))

        level_arrays = []
        for j, _ in enumerate(LEVEL_NAMES):
            column = level_scores[:, j]
            level_arrays.append(per_label(column, ~scored | np.isnan(column).all(axis=1)))
        level_struct = pa.StructArray.from_arrays(level_arrays, names=list(LEVEL_NAMES), mask=pa.array(~scored))
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
            "image_width": pa.array(np.asarray(people["image_width"], dtype=np.int32)),
            "image_height": pa.array(np.asarray(people["image_height"], dtype=np.int32)),
            "model": pa.array([model_id] * n, pa.string()),
            "error": pa.array([str(e) if has_error(e) else None for e in people["error"]], pa.string()),
        }
        return pa.table([columns[f.name] for f in schema], schema=schema)


def split_rows(table: pa.Table, image_index: np.ndarray, n_images: int) -> list[pa.Table]:
    """Rows -> one table per image, by each row's image index."""
    image_index = np.asarray(image_index)
    return [table.take(pa.array(np.flatnonzero(image_index == i))) for i in range(n_images)]


CROP_MODES = DECODE_MODES = ("auto", "pil", "device")


def _resolve_mode(key: str, value: str, on_cuda: bool) -> str:
    """``auto`` -> ``device`` on CUDA, else ``pil``; ``pil``/``device`` as given."""
    if value not in CROP_MODES:
        raise ValueError(f"{key}={value!r} is not one of {list(CROP_MODES)}")
    if value == "auto":
        return "device" if on_cuda else "pil"
    return value


def _device_of(obj: Any) -> str | None:
    """Where a detector or model runs ("cuda:0", "cpu"), or None for one without a
    network (the full-frame detector) or no object at all."""
    if obj is None:
        return None
    device = getattr(obj, "device", None)
    if device is not None:
        return str(device)
    parameters = getattr(obj, "parameters", None)
    if callable(parameters):
        for parameter in parameters():
            return str(parameter.device)
    return None


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
    from emotion.models.registry import build_model, checkpoint_of

    device = _resolve_device(cfg.get("device"))
    checkpoint = checkpoint_of(cfg)
    if checkpoint:
        from emotion.checkpoint import load_model_from_checkpoint

        return load_model_from_checkpoint(checkpoint, device=device)
    return build_model(cfg["name"], {**cfg, "device": device})


def spec_of(model: EmotionModel) -> InputSpec:
    """The input contract of a built model (no second read of its checkpoint)."""
    return InputSpec(name=model.name, levels=tuple(model.input_levels), input_size=int(model.input_size),
                     labels=tuple(model.labels), multi_label=bool(model.multi_label),
                     model_id=f"{model.name}@sha256:{model.checkpoint_hash[:16]}",
                     finds_people=bool(getattr(model, "finds_people", False)))


def build_predictor(cfg: Mapping, *, detect: bool = True, recognize: bool = True,
                    spec: InputSpec | None = None) -> EmotionPredictor:
    """Build from a config with ``detector``, ``model`` and ``predictor`` sections.

    ``detect``/``recognize`` choose which parts to load (Ray Data runs them in separate
    actor pools); ``spec`` saves re-deriving the model's input contract where the caller
    has it (else it comes from the model, or from the config when the model is not built).
    """
    from emotion.models.registry import input_spec

    predictor_cfg = cfg["predictor"]
    given = spec is not None
    if spec is None:
        spec = input_spec(cfg["model"])
    if spec.finds_people:  # single stage: the model is the detector; recognize only places its scores
        detector, model = None, build_emotion_model(cfg["model"]) if detect else None
    else:
        detector = build_detector_from_config(cfg["detector"]) if detect else None
        model = build_emotion_model(cfg["model"]) if recognize else None
    if model is not None and not given:
        spec = spec_of(model)  # the loaded weights' hash
    crop = CropSpec(levels=spec.levels, size=spec.input_size,
                    # The margin around a face box is the box source's convention.
                    head_expand=float(cfg["detector"]["head_expand"]),
                    max_side=int(predictor_cfg["max_image_side"]), align=bool(predictor_cfg["align_faces"]))
    # Configs written before these keys existed (a saved serve config) get the YAML defaults.
    return EmotionPredictor(detector, model, spec=spec, crop=crop, threshold=float(predictor_cfg["threshold"]),
                            max_people=int(predictor_cfg["max_people"]), crops=str(predictor_cfg.get("crops", "auto")),
                            decode=str(predictor_cfg.get("decode", "auto")),
                            precision=str(predictor_cfg.get("precision", "fp32")),
                            person_threshold=_person_threshold(cfg["model"]))


def _person_threshold(model_cfg: Mapping) -> float:
    """A single-stage model's least person score (``model.score_threshold``; 0.5 when unset)."""
    value = model_cfg.get("score_threshold")
    return 0.5 if value is None else float(value)
