"""Serving job: ``emotion serve [overrides]`` (Hydra app) starts the HTTP API on Ray Serve.

The embedded default starts a local Ray and listens on 127.0.0.1:8000; ``ray=cluster``
joins a running cluster instead. Then:

    curl -F file=@photo.jpg localhost:8000/v1/recognize
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import threading
import time

import hydra
import ray
from omegaconf import DictConfig, OmegaConf
from ray import serve

from emotion.pipelines.ray_env import init_ray
from emotion.pipelines.serving import ServeJobSettings, ServeSettings, bind_app
from emotion.pipelines.serving.ingress import DRAIN_KEY_PREFIX, drain_key, in_flight_key
from emotion.preflight import check_score_weights
from emotion.settings import parse_settings
from jobs.user_errors import exit_on_user_error

log = logging.getLogger("emotion.serve")

# How long a stop waits for Serve to drain and stop its replicas (about 2 s each) before
# exiting regardless.
SHUTDOWN_WAIT_S = 5.0
# A stop signal sent to the whole process group reaches Ray's processes too; their GCS has
# stopped answering by this time, which tells that case apart from a signal to this process.
GROUP_SIGNAL_GRACE_S = 0.5


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def parse(cfg: DictConfig) -> ServeJobSettings:
    """The job's settings from a composed config: a bad key or value stops here, before
    Ray starts, with one line naming it."""
    settings = parse_settings(ServeJobSettings, OmegaConf.to_container(cfg, resolve=True))
    check_score_weights(settings)
    return settings


def run(cfg: DictConfig, blocking: bool = False) -> str:
    """Start Serve and deploy the app from a composed config; returns the base URL.

    ``blocking=True`` (the CLI) serves until Ctrl-C; tests call it non-blocking and shut
    Serve down themselves.
    """
    return serve_app(parse(cfg), blocking)


def serve_app(job: ServeJobSettings, blocking: bool = False) -> str:
    """``run`` for settings already parsed."""
    settings = job.serve
    if settings.throughput_optimized:
        # Read by Ray's processes when they start, so set before the local Ray starts.
        os.environ.setdefault("RAY_SERVE_THROUGHPUT_OPTIMIZED", "1")
        os.environ.setdefault("RAY_SERVE_ENABLE_HA_PROXY", "1")
        # A stopping ingress replica otherwise holds its port 30 s for an outside load
        # balancer, past the controller's 30 s shutdown bound ("Controller failed to shut
        # down within 30.0s"); the local HAProxy is updated by the controller itself.
        os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", str(settings.direct_ingress_drain_s))
    init_ray(job.ray, metrics_export_port=settings.metrics_export_port)
    # HTTP options are cluster-wide and fixed once Serve runs: a second call keeps the first.
    serve.start(http_options={"host": settings.host, "port": settings.port})
    app = bind_app(job)
    prefix = settings.route_prefix.rstrip("/")
    url = f"http://{settings.host}:{settings.port}{prefix}"
    log.info("deploying %r at %s (docs: %s/docs); auth %s", settings.app_name, url, url,
             "on" if settings.resolved_token() else "off")
    if blocking:
        # Process managers and containers stop with SIGTERM: shut down as on Ctrl-C.
        # (Set after Ray starts, which installs its own handler.)
        signal.signal(signal.SIGTERM, _interrupt)
    serve.run(app, name=settings.app_name, route_prefix=settings.route_prefix, blocking=False)
    if blocking:
        # Serve's own blocking wait logs a warning on the stop signal; the stop is ours to report.
        while True:
            time.sleep(3600)
    return url


def drain(app_name: str, timeout_s: float, poll_s: float = 0.25) -> int:
    """Tell every ingress replica of ``app_name`` to refuse new requests (503 with
    Retry-After, ``/readyz`` 503 too), then wait until the requests they hold have been
    answered, at most ``timeout_s``. Returns the requests still held when it stopped
    waiting (0: a clean drain).

    The signal is a key in Ray's key-value store that the replicas poll every 0.25 s;
    each then reports its in-flight count under its own key.
    """
    from ray.experimental.internal_kv import _internal_kv_del, _internal_kv_get, _internal_kv_list, _internal_kv_put

    _internal_kv_put(drain_key(app_name), b"1", overwrite=True)
    prefix = in_flight_key(app_name, "")
    started = time.monotonic()
    held = -1
    try:
        while time.monotonic() - started < timeout_s:
            time.sleep(poll_s)
            counts = [_internal_kv_get(key) for key in _internal_kv_list(prefix)]
            held = sum(int(c) for c in counts if c is not None) if counts else -1
            # Every replica polls within poll_s: after 3 polls, all that exist have reported.
            if held == 0 and time.monotonic() - started > 3 * poll_s:
                break
        return max(held, 0)
    finally:
        # Replicas keep draining once told; the keys must not drain a later app of the same name.
        _internal_kv_del(DRAIN_KEY_PREFIX + app_name, del_by_prefix=True)


def shutdown(wait_s: float = SHUTDOWN_WAIT_S) -> None:
    """Stop Serve (waiting at most ``wait_s`` seconds for it), then Ray.

    A SIGTERM to the whole process group (``kill -TERM -<pgid>``, a process manager
    stopping the group) reaches Ray's own processes too: the GCS is then gone or going,
    and ``serve.shutdown()`` (30 s for the controller) and ``ray.shutdown()`` (seconds of
    RPC timeouts) would wait on it. So the wait for Serve ends as soon as the GCS stops
    answering, and the process then exits (status 0) without ``ray.shutdown()``: Ray's
    processes are stopping on the same signal. (Ray's processes outlive a Ctrl-C: Serve
    then drains within ``wait_s`` and Ray stops as usual.)
    """
    if not ray.is_initialized():
        return
    gcs = ray.get_runtime_context().gcs_address
    stopped = asyncio.run(_stop_serve(gcs, wait_s))
    if not _reachable(gcs):
        log.info("Ray's processes are stopping already (they got the signal too): exiting")
        _exit_now()
    if not stopped:
        log.info("Serve's shutdown did not finish within %.0f s; stopping Ray", wait_s)
    ray.shutdown()


async def _stop_serve(gcs: str, wait_s: float) -> bool:
    """Serve's shutdown, given up after ``wait_s`` or when the GCS stops answering;
    whether it finished."""
    # A coroutine, not a thread: a thread left waiting in a Ray call would make Ray's core
    # worker end the process (status 1) once ray.shutdown() has run.
    task = asyncio.ensure_future(serve.shutdown_async())
    deadline = time.monotonic() + wait_s
    while not task.done() and time.monotonic() < deadline and _reachable(gcs):
        await asyncio.wait({task}, timeout=0.2)
    if not task.done():
        task.cancel()
    (outcome,) = await asyncio.gather(task, return_exceptions=True)
    if isinstance(outcome, Exception):  # Ray may be half gone; stopping Ray follows regardless
        log.info("Serve shutdown: %r", outcome)
    return outcome is None


def _reachable(address: str, timeout_s: float = 0.5) -> bool:
    """Whether something accepts TCP connections at ``host:port`` (the GCS's gRPC port)."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return True
    except (OSError, ValueError):
        return False


def _exit_now() -> None:
    # Skips atexit: Ray's hook would run ray.shutdown() against the dead GCS after all.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _ignore_stop_signals() -> None:
    # A second Ctrl-C or SIGTERM must not break off the cleanup halfway: it is bounded anyway.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)


def drain_and_shutdown(settings: ServeSettings, local_ray: bool) -> None:
    """SIGTERM or Ctrl-C: drain the app (in-flight requests finish, new ones get 503),
    then stop. A drained app on the local Ray this job started stops with Ray itself:
    Serve's own shutdown would close the port first and then take seconds, refusing
    connections instead of answering 503 until the exit. On a cluster, Serve is shut down
    as before. A signal to the whole process group reaches Ray's processes too: their GCS
    stops answering within moments, there is nothing left to drain, and the stop is
    immediate."""
    if ray.is_initialized():
        gcs = ray.get_runtime_context().gcs_address
        time.sleep(GROUP_SIGNAL_GRACE_S)
        if _reachable(gcs) and _drain_while_reachable(gcs, settings) and local_ray:
            log.info("stopping the local Ray")
            ray.shutdown()
            return
    shutdown()


def _drain_while_reachable(gcs: str, settings: ServeSettings) -> bool:
    """Drain, giving up if the GCS goes away; whether every request was answered."""
    log.info("draining: new requests get 503 while in-flight ones finish (at most %.0f s)", settings.drain_timeout_s)
    outcome: list = []

    def work() -> None:
        try:
            outcome.append(drain(settings.app_name, settings.drain_timeout_s))
        except Exception as exc:  # Ray going away under us: stop regardless
            outcome.append(exc)

    # A thread, so that the wait ends when the GCS goes away mid-drain (a key-value call
    # to a dead GCS retries for a minute); shutdown() then exits without waiting on it.
    worker = threading.Thread(target=work, name="drain", daemon=True)
    worker.start()
    while worker.is_alive() and _reachable(gcs):
        worker.join(0.25)
    if outcome and isinstance(outcome[0], int):
        if outcome[0] == 0:
            log.info("drained: no request in flight")
            return True
        log.info("drain timed out with %d request(s) in flight", outcome[0])
        return False
    log.info("drain stopped: %r", outcome[0] if outcome else "Ray's GCS stopped answering")
    return False


@hydra.main(config_path="configs", config_name="serve", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error(log):
        job = parse(cfg)
        try:
            serve_app(job, blocking=True)
        except KeyboardInterrupt:
            _ignore_stop_signals()
            log.info("shutting down")
            drain_and_shutdown(job.serve, local_ray=not job.ray.address)


if __name__ == "__main__":
    main()
