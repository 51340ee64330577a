"""What the service reports about itself: Prometheus metrics and the ``Server-Timing`` header.

Metrics are ``ray.util.metrics`` objects. Ray exports them, with Ray Serve's own
``ray_serve_*`` series, in Prometheus text on every node's metrics export port
(``ray start --metrics-export-port``; ``serve.metrics_export_port`` for the local Ray of
``emotion serve``), prefixed ``ray_``:

* ``ray_emotion_http_requests_total{route, status}``: answered requests (ingress);
* ``ray_emotion_http_request_duration_ms{route}``: latency histogram in the ingress;
* ``ray_emotion_batch_size``: histogram of the batches the recognizer ran;
* ``ray_emotion_batch_queue_length``: requests waiting for a batch, per replica;
* ``ray_emotion_model_info{model_id}``: 1 per loaded model (name @ checkpoint hash).

The two gauges are recorded again every ``GAUGE_REFRESH_S`` by a thread of the replica.

The objects are made on first use in the replica that records them, never at import
(the driver imports these modules to build the app).
"""

# No ``from __future__ import annotations``, like the rest of the package.

import logging
import threading
from functools import lru_cache
from typing import Callable, Mapping

log = logging.getLogger(__name__)

LATENCY_BOUNDARIES_MS = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000]
BATCH_SIZE_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64, 128]
# Routes outside the API share one label, so scanners cannot grow the series without bound.
OTHER_ROUTE = "other"


class IngressMetrics:
    def __init__(self) -> None:
        from ray.util.metrics import Counter, Histogram

        self.requests = Counter("emotion_http_requests_total", description="HTTP requests answered, by route and status",
                                tag_keys=("route", "status"))
        self.latency = Histogram("emotion_http_request_duration_ms", description="time in the ingress per request (ms)",
                                 boundaries=LATENCY_BOUNDARIES_MS, tag_keys=("route",))

    def observe(self, route: str, status: int, duration_ms: float) -> None:
        self.requests.inc(1, tags={"route": route, "status": str(status)})
        self.latency.observe(duration_ms, tags={"route": route})


# Seconds between re-recordings of the gauges: Ray exports a gauge's value in the one export
# cycle after it was set (its observations are cleared on every collection; Ray's default
# cycle is 10 s), so a value set once (the model, or a queue length while the replica idles)
# would drop out of later scrapes, or be lost if set before the exporter connected.
GAUGE_REFRESH_S = 4.0


class RecognizerMetrics:
    def __init__(self, model_id: str, queue_length: Callable[[], int]) -> None:
        from ray.util.metrics import Gauge, Histogram

        self.batch_size = Histogram("emotion_batch_size", description="images per model batch",
                                    boundaries=BATCH_SIZE_BOUNDARIES)
        self.queue_length = Gauge("emotion_batch_queue_length", description="requests waiting for a batch")
        self.model_info = Gauge("emotion_model_info", description="the loaded model (always 1)", tag_keys=("model_id",))
        self._model_id = model_id
        self._read_queue_length = queue_length
        self.refresh_gauges()
        self._stopped = threading.Event()
        threading.Thread(target=self._refresh_forever, name="emotion-gauges", daemon=True).start()

    def on_batch(self, size: int, queue_length: int) -> None:
        self.batch_size.observe(size)
        self.queue_length.set(queue_length)

    def refresh_gauges(self) -> None:
        """Record the gauges' current values (module doc of ``GAUGE_REFRESH_S``)."""
        self.model_info.set(1, tags={"model_id": self._model_id})
        self.queue_length.set(self._read_queue_length())

    def stop(self) -> None:
        self._stopped.set()

    def _refresh_forever(self) -> None:
        while not self._stopped.wait(GAUGE_REFRESH_S):
            try:
                self.refresh_gauges()
            except Exception as exc:  # metrics must never take the replica down
                log.warning("recording the gauges failed: %r", exc)


@lru_cache(maxsize=1)
def ingress_metrics() -> IngressMetrics:
    return IngressMetrics()


_in_flight = [0]  # HTTP requests this process is answering now (the middleware counts them)


def in_flight() -> int:
    return _in_flight[0]


class MetricsMiddleware:
    """ASGI middleware that counts every answered request by route template and status,
    and observes its latency (pure ASGI: no per-request task as ``BaseHTTPMiddleware`` has)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        import time

        start = time.perf_counter()
        status = [500]

        async def send_and_note(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        _in_flight[0] += 1
        try:
            await self.app(scope, receive, send_and_note)
        finally:
            _in_flight[0] -= 1
            route = scope.get("route")
            template = getattr(route, "path", None) or OTHER_ROUTE
            try:
                ingress_metrics().observe(template, status[0], (time.perf_counter() - start) * 1000)
            except Exception as exc:  # a metrics failure must never fail the request
                log.warning("recording request metrics failed: %r", exc)


def server_timing(phases_ms: Mapping[str, float], batch_size: int | None = None) -> str:
    """``Server-Timing`` header value: ``name;dur=<ms>`` per phase, plus the batch size."""
    parts = [f"{name};dur={value:.1f}" for name, value in phases_ms.items()]
    if batch_size is not None:
        parts.append(f'batch;desc="{batch_size}"')
    return ", ".join(parts)
