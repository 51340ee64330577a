"""The model deployment: ``EmotionRecognizer`` runs the tagging predictor
(``emotion.predictor.build_predictor``) on batches of uploaded images gathered by
``@serve.batch``, and answers each image with the API's response body
(``ingress.image_response``); ``_model_info`` is what ``/v1/models`` reports.
"""

# No ``from __future__ import annotations``, like the rest of the package (nothing here
# needs it; Serve and FastAPI read annotations in app.py and ingress.py).

import asyncio
import logging
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Mapping

from ray import serve

from emotion.pipelines.serving.ingress import image_response
from emotion.pipelines.serving.settings import Limits
from emotion.pipelines.worker_startup import limit_torch_threads, loading_models
from emotion.predictor import build_predictor

log = logging.getLogger(__name__)


@serve.deployment(name="EmotionRecognizer")
class EmotionRecognizer:
    """Runs the predictor on batches of uploaded images.

    Batching parameters arrive as ``user_config`` (``reconfigure``), so a Serve config
    update can change them without reloading the model.
    """

    def __init__(self, predictor_cfg: dict, limits: dict, torch_threads: int = 1):
        self._limits = Limits.model_validate(limits)
        with loading_models():
            # Replicas share the machine with the proxy and the ingress: bound intra-op threads.
            limit_torch_threads(torch_threads)
            self._predictor = build_predictor(predictor_cfg)
        self._info = _model_info(self._predictor, predictor_cfg)
        # One thread runs the predictor, so the replica's event loop keeps accepting
        # requests (they queue into the next batch) and answering health checks.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="predictor")
        self._recent_batches: deque[int] = deque(maxlen=256)
        self._histogram: Counter[int] = Counter()
        self._busy_s = 0.0
        self._batching = {"max_batch_size": 16, "batch_wait_timeout_s": 0.01}  # the decorator's, until reconfigure
        log.info("recognizer ready: %s", self._info["id"])

    def reconfigure(self, user_config: dict) -> None:
        self._batching = {"max_batch_size": int(user_config["max_batch_size"]),
                          "batch_wait_timeout_s": float(user_config["batch_wait_timeout_s"])}
        self._recognize_batch.set_max_batch_size(self._batching["max_batch_size"])
        self._recognize_batch.set_batch_wait_timeout_s(self._batching["batch_wait_timeout_s"])

    async def recognize(self, source: str, payload: bytes) -> dict:
        """One image -> response body (``model``, ``labels``, ``image``, ``people``) or
        ``{"error", "detail"}``. Calls arriving together are batched."""
        return await self._recognize_batch(source, payload)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def _recognize_batch(self, sources: list[str], payloads: list[bytes]) -> list[dict]:
        self._recent_batches.append(len(sources))
        self._histogram[len(sources)] += 1
        start = time.perf_counter()
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, self._predict, sources, payloads)
        finally:
            self._busy_s += time.perf_counter() - start

    def _predict(self, sources: list[str], payloads: list[bytes]) -> list[dict]:
        try:
            tables = self._predictor.predict_images(sources, payloads, max_pixels=self._limits.max_image_pixels)
            return [image_response(table.to_pylist(), self._info) for table in tables]
        except Exception as exc:  # keep the replica and the rest of the batch alive
            if len(sources) == 1:
                log.exception("predictor failed on %s", sources[0])
                # The reason stays in the server log: exception text can reveal internals.
                return [{"error": "internal", "detail": f"{sources[0]}: the model failed on this image ({type(exc).__name__})"}]
            # Find the image that broke the batch: the others still get their answers.
            return [self._predict([s], [p])[0] for s, p in zip(sources, payloads)]

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
            **self._batching,
        }


def _model_info(predictor: Any, predictor_cfg: Mapping) -> dict:
    model = predictor.model
    return {
        "name": model.name,
        "id": f"{model.name}@sha256:{model.checkpoint_hash[:16]}",
        "checkpoint_hash": model.checkpoint_hash,
        "labels": list(model.labels),
        "multi_label": bool(model.multi_label),
        "input_levels": list(model.input_levels),
        "input_size": int(model.input_size),
        "threshold": float(predictor.threshold),
        # A single-stage model finds the people itself: no detector runs.
        "detector": None if predictor.spec.finds_people else str(predictor_cfg["detector"].get("name", "retinaface")),
    }
