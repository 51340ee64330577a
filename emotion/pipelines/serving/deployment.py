"""The model deployment: ``EmotionRecognizer`` runs the tagging predictor
(``emotion.predictor.build_predictor``) on batches of uploaded images gathered by a
``ContinuousBatcher`` (``batching.py``), and answers each image with the API's response
body (``ingress.image_response``) and where its time went; ``_model_info`` is what
``/v1/models`` reports.
"""

# No ``from __future__ import annotations``, like the rest of the package (nothing here
# needs it; Serve and FastAPI read annotations in app.py and ingress.py).

import asyncio
import logging
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ray import serve

from emotion.pipelines.serving.batching import ContinuousBatcher
from emotion.pipelines.serving.ingress import image_response
from emotion.pipelines.serving.settings import Limits
from emotion.pipelines.serving.telemetry import RecognizerMetrics
from emotion.pipelines.worker_startup import limit_torch_threads, loading_models
from emotion.models.protocol import model_id
from emotion.predictor import build_predictor
from emotion.schema import split_rows
from emotion.settings import PredictorConfig

log = logging.getLogger(__name__)


@serve.deployment(name="EmotionRecognizer")
class EmotionRecognizer:
    """Runs the predictor on batches of uploaded images.

    A request that reaches an idle replica runs at once; requests that arrive while a
    batch runs form the next batch (up to ``max_batch_size``). Batching parameters arrive
    as ``user_config`` (``reconfigure``), so a Serve config update can change them
    without reloading the model.
    """

    def __init__(self, predictor_config: PredictorConfig, limits: Limits, torch_threads: int, batching: dict):
        self._limits = limits
        with loading_models():
            # Replicas share the machine with the proxy and the ingress: bound intra-op threads.
            limit_torch_threads(torch_threads)
            self._predictor = build_predictor(predictor_config)
        self._info = _model_info(self._predictor, predictor_config)
        # One thread runs the predictor, so the replica's event loop keeps accepting
        # requests (they queue into the next batch) and answering health checks.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="predictor")
        self._batcher = ContinuousBatcher(self._run_batch, batching["max_batch_size"],
                                          batching["batch_wait_timeout_s"], on_batch=self._on_batch)
        self._metrics = RecognizerMetrics(self._info["id"], lambda: self._batcher.queue_length)
        self._recent_batches: deque[int] = deque(maxlen=256)
        self._histogram: Counter[int] = Counter()
        self._busy_s = 0.0
        log.info("recognizer ready: %s", self._info["id"])

    def __del__(self) -> None:  # Serve calls it when the replica shuts down
        metrics = getattr(self, "_metrics", None)  # absent when loading the model failed
        if metrics is not None:
            metrics.stop()

    def reconfigure(self, user_config: dict) -> None:
        self._batcher.configure(int(user_config["max_batch_size"]), float(user_config["batch_wait_timeout_s"]))

    async def recognize(self, source: str, payload: bytes) -> dict:
        """One image -> ``{"response": body, "timing_ms": {phase: ms}, "batch_size": n}``.

        ``body`` is the API's answer (``model``, ``labels``, ``image``, ``people``) or
        ``{"error", "detail"}``; ``timing_ms`` holds ``queue`` (waiting for a batch) and the
        batch's ``decode``, ``detect`` and ``recognise`` times."""
        result = await self._batcher.submit((source, payload))
        response, timing = result.value
        return {"response": response, "timing_ms": {"queue": result.queue_s * 1000, **timing},
                "batch_size": result.batch_size}

    def _on_batch(self, size: int, queue_length: int) -> None:
        self._recent_batches.append(size)
        self._histogram[size] += 1
        self._metrics.on_batch(size, queue_length)

    async def _run_batch(self, items: list) -> list:
        sources, payloads = [s for s, _ in items], [p for _, p in items]
        start = time.perf_counter()
        try:
            responses, timing = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._predict, sources, payloads)
        finally:
            self._busy_s += time.perf_counter() - start
        try:
            self._metrics.queue_length.set(self._batcher.queue_length)
        except Exception as exc:  # metrics must never cost an answer
            log.warning("recording the queue length failed: %r", exc)
        return [(response, timing) for response in responses]

    def _predict(self, sources: list[str], payloads: list[bytes]) -> tuple[list[dict], dict]:
        predictor = self._predictor
        try:
            t0 = time.perf_counter()
            decoded = predictor.decode(sources, payloads, max_pixels=self._limits.max_image_pixels)
            t1 = time.perf_counter()
            people = predictor.detect(decoded)
            t2 = time.perf_counter()
            tables = split_rows(predictor.recognize(people), people["image_index"], len(sources))
            responses = [image_response(table.to_pylist(), self._info) for table in tables]
            t3 = time.perf_counter()
            return responses, {"decode": (t1 - t0) * 1000, "detect": (t2 - t1) * 1000, "recognise": (t3 - t2) * 1000}
        except Exception as exc:  # keep the replica and the rest of the batch alive
            if len(sources) == 1:
                log.exception("predictor failed on %s", sources[0])
                # The reason stays in the server log: exception text can reveal internals.
                return [{"error": "internal", "detail": f"{sources[0]}: the model failed on this image "
                                                         f"({type(exc).__name__})"}], {}
            # Find the image that broke the batch: the others still get their answers.
            return [self._predict([s], [p])[0][0] for s, p in zip(sources, payloads)], {}

    def info(self) -> dict:
        """Model name, id, checkpoint hash, label set, multi_label, levels, detector."""
        return dict(self._info)

    def stats(self) -> dict:
        """Batch sizes this replica ran (for tests, benchmarks and tuning)."""
        return {
            "batches": sum(self._histogram.values()),
            "requests": sum(size * n for size, n in self._histogram.items()),
            "batch_size_histogram": {str(size): n for size, n in sorted(self._histogram.items())},
            "recent_batch_sizes": list(self._recent_batches),
            "busy_s": round(self._busy_s, 3),
            "queue_length": self._batcher.queue_length,
            "max_batch_size": self._batcher.max_batch_size,
            "batch_wait_timeout_s": self._batcher.wait_s,
        }


def _model_info(predictor: Any, predictor_config: PredictorConfig) -> dict:
    model = predictor.model
    return {
        "name": model.name,
        "id": model_id(model.name, model.checkpoint_hash),
        "checkpoint_hash": model.checkpoint_hash,
        "labels": list(model.labels),
        "multi_label": bool(model.multi_label),
        "input_levels": list(model.input_levels),
        "input_size": int(model.input_size),
        "threshold": float(predictor.threshold),
        # A single-stage model finds the people itself: no detector runs.
        "detector": None if predictor.spec.finds_people else predictor_config.detector.name,
    }
