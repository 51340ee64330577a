"""The one predictor used by Ray Data (tagging), Ray Serve and the Python API.

Two steps, which Ray Data runs in separate actor pools and Serve runs back to back:

* ``detect``: a batch of decoded images -> one row per person (face and body boxes,
  detector score, and the crops the emotion model needs), or one row per image with no
  person or with an error;
* ``recognize``: those rows -> a ``pyarrow.Table`` in the output schema
  (``emotion.schema.output_schema``).

Batches are dicts of numpy arrays; per-image Python objects appear only where images of
different sizes must (the ``image`` column is an object array of [H, W, 3] uint8). Image
bytes become that batch in ``emotion.images.decode_batch``.

``build_predictor`` builds one from a job's ``detector``, ``model`` and ``predictor``
settings (the networks through ``emotion.models.loading``).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa

from emotion.allocator import retain_freed_memory
from emotion.boxes import body_box_from_face
from emotion.crops import CropSpec, head_crops, person_crops
from emotion.devices import device_of
from emotion.images import DEFAULT_MAX_PIXELS, decode_batch
from emotion.models.loading import build_detector_from_config, build_emotion_model, input_spec, spec_of
from emotion.models.protocol import EmotionModel, InputSpec, single_level_columns
from emotion.models.settings import yaml_settings
from emotion.schema import LEVEL_NAMES, has_error, output_schema, output_table, split_rows
from emotion.score_weights import weight_vector, weighted_scores
from emotion.settings import PredictorConfig, parse_settings

# Where crops are cut and JPEGs decoded (``predictor.crops``, ``predictor.decode``).
MODES = ("auto", "pil", "device")


class EmotionPredictor:
    """Finds people and recognises each one's emotion.

    Args:
        detector: object with ``detect(list of RGB uint8 arrays) -> list of dicts`` holding
            ``boxes`` [n,4], ``scores`` [n] (working-image pixels). None if only
            ``recognize`` is used.
        model: an ``EmotionModel``. None if only ``detect`` is used.
        spec: the model's input contract (``emotion.models.loading.input_spec``), known
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
            least person score a found person needs (the model's ``score_threshold``;
            None for any other model). Such a model replaces the detector:
            ``detect`` calls its ``find_people`` on the whole images, rows get its body
            boxes (no face box) and its emotion scores (``person_scores``), and
            ``recognize`` only places them; no crops are cut.
        score_weights: ``{class name: weight}`` (``predictor.score_weights``): a
            single-label model's scores, every level's included, are multiplied by them
            and renormalised (``emotion.score_weights``); None: the model's own scores.
    """

    def __init__(self, detector: Any | None, model: EmotionModel | None, *, spec: InputSpec, crop: CropSpec,
                 threshold: float, max_people: int, crops: str = "pil", decode: str = "pil",
                 precision: str = "fp32", device: Any | None = None, person_threshold: float | None,
                 score_weights: Mapping[str, float] | None = None):
        from emotion.precision import PRECISIONS, check_precision

        self.detector = detector
        self.model = model
        self.spec = spec
        self.crop = crop
        self.threshold = threshold
        self.max_people = max_people
        if spec.finds_people and person_threshold is None:
            raise ValueError(f"{spec.name} finds people itself: it needs a person_threshold")
        self.person_threshold = person_threshold  # single-stage models: least person score kept
        self.score_weights = weight_vector(score_weights, spec.labels, multi_label=spec.multi_label)
        self.detector_device = device_of(detector)
        self.model_device = device_of(model)
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
        if self.decode_mode == "device":
            from emotion.device_decode import decode_batch_on_device  # imports torch(vision)

            return decode_batch_on_device(sources, payloads, self.crop.max_side, max_pixels, read_errors,
                                          device=self.device)
        return decode_batch(sources, payloads, self.crop.max_side, max_pixels, read_errors)

    # -- step 1 -------------------------------------------------------------------------
    def detect(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Decoded images -> person rows. See ``emotion.images.decode_batch`` for the input
        columns.

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
            scores[idx] = weighted_scores(columns["scores"], self.score_weights)
            for name, values in columns["level_scores"].items():
                level_scores[idx, LEVEL_NAMES.index(name)] = weighted_scores(values, self.score_weights)
            refined[idx] = columns["refined"]
            for row, names in zip(idx, columns["dropped_levels"]):
                dropped[row] = names
        emotions = [self._emotion_names(scores[r], labels) if has_person[r] else [] for r in range(n)]
        return output_table(people, labels, self.spec.model_id, scores, level_scores, refined, dropped, emotions)

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


def _resolve_mode(key: str, value: str, on_cuda: bool) -> str:
    """``auto`` -> ``device`` on CUDA, else ``pil``; ``pil``/``device`` as given."""
    if value not in MODES:
        raise ValueError(f"{key}={value!r} is not one of {list(MODES)}")
    if value == "auto":
        return "device" if on_cuda else "pil"
    return value


def build_predictor(config: PredictorConfig | Mapping, *, detect: bool = True, recognize: bool = True,
                    spec: InputSpec | None = None) -> EmotionPredictor:
    """Build from a job's settings (``emotion.settings.PredictorConfig``: the ``detector``,
    ``model`` and ``predictor`` groups), or from a config mapping holding those three
    sections, validated first (``ConfigError`` naming a bad or missing key).

    ``detect``/``recognize`` choose which parts to load (Ray Data runs them in separate
    actor pools); ``spec`` saves re-deriving the model's input contract where the caller
    has it (else it comes from the model, or from the config when the model is not built).
    The process's allocator is set to keep freed memory (``emotion.allocator``), and the
    emotion model runs in eval mode with its batch norms folded (``emotion.models.fusion``;
    the detector builders fold theirs).
    """
    if not isinstance(config, PredictorConfig):
        sections = {name: config.get(name) for name in ("detector", "model", "predictor")}
        config = parse_settings(PredictorConfig, sections)
    retain_freed_memory()  # the process is about to run batches (emotion/allocator.py)
    model_cfg = config.model.model_dump()
    given = spec is not None
    if spec is None:
        spec = input_spec(model_cfg)
    if spec.finds_people:  # single stage: the model is the detector; recognize only places its scores
        detector, model = None, build_emotion_model(model_cfg) if detect else None
    else:
        detector = build_detector_from_config(config.detector) if detect else None
        model = build_emotion_model(model_cfg) if recognize else None
    if model is not None:
        _for_inference(model)
    if model is not None and not given:
        spec = spec_of(model)  # the loaded weights' hash
    options = config.predictor
    crop = CropSpec(levels=spec.levels, size=spec.input_size,
                    # The margin around a face box is the box source's convention.
                    head_expand=config.detector.head_expand, max_side=options.max_image_side,
                    align=options.align_faces)
    return EmotionPredictor(detector, model, spec=spec, crop=crop, threshold=options.threshold,
                            max_people=options.max_people, crops=options.crops, decode=options.decode,
                            precision=options.precision,
                            person_threshold=_person_threshold(model_cfg, spec) if spec.finds_people else None,
                            score_weights=options.score_weights)


def _for_inference(model: EmotionModel) -> None:
    """The predictor's model only infers: eval mode, batch norms folded into the
    convolutions before them (``emotion.models.fusion``)."""
    from torch import nn

    from emotion.models.fusion import fold_batch_norms

    if isinstance(model, nn.Module):
        fold_batch_norms(model.eval())


def _person_threshold(model_cfg: Mapping, spec: InputSpec) -> float:
    """A single-stage model's least person score: ``model.score_threshold``. A checkpoint of
    such a model named by another family's config (which has no such key) takes the value
    of its own family's YAML."""
    if "score_threshold" in model_cfg:
        return float(model_cfg["score_threshold"])
    return float(yaml_settings(spec.name)["score_threshold"])
