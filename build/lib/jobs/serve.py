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
import time

import hydra
import ray
from omegaconf import DictConfig, OmegaConf
from ray import serve

from emotion.pipelines.ray_env import init_ray
from emotion.pipelines.serving import ServeArgs, ServeSettings, build_app
from emotion.settings import ServeJobSettings, parse_settings
from jobs.user_errors import exit_on_user_error

log = logging.getLogger("emotion.serve")

# How long a stop waits for Serve to drain and stop its replicas (about 2 s each) before
# exiting regardless.
SHUTDOWN_WAIT_S = 5.0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run(cfg: DictConfig, blocking: bool = False) -> str:
    """Start Serve and deploy the app from a composed config; returns the base URL.

    ``blocking=True`` (the CLI) serves until Ctrl-C; tests call it non-blocking and shut
    Serve down themselves.
    """
    plain = OmegaConf.to_container(cfg, resolve=True)
    # Fail on a bad config before starting Ray, with one line naming the key.
    parse_settings(ServeJobSettings, plain)
    settings = parse_settings(ServeSettings, plain["serve"], prefix="serve")
    if settings.throughput_optimized:
        # Read by Ray's processes when they start, so set before the local Ray starts.
        os.environ.setdefault("RAY_SERVE_THROUGHPUT_OPTIMIZED", "1")
        os.environ.setdefault("RAY_SERVE_ENABLE_HA_PROXY", "1")
    init_ray(plain.get("ray") or {})
    # HTTP options are cluster-wide and fixed once Serve runs: a second call keeps the first.
    serve.start(http_options={"host": settings.host, "port": settings.port})
    app = build_app(ServeArgs(**{name: plain[name] for name in ("detector", "model", "predictor", "serve")}))
    prefix = settings.route_prefix.rstrip("/")
    url = f"http://{settings.host}:{settings.port}{prefix}"
    log.info("deploying %r at %s (docs: %s/docs); auth %s", settings.app_name, url, url,
             "on" if settings.resolved_token() else "off")
    if blocking:
        # Process managers and containers stop with SIGTERM: shut down as on Ctrl-C.
        # (Set after Ray starts, which installs its own handler.)
        signal.signal(signal.SIGTERM, _interrupt)
    serve.run(app, name=settings.app_name, route_prefix=settings.route_prefix, blocking=blocking)
    return url


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


@hydra.main(config_path="configs", config_name="serve", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error(log):
        try:
            run(cfg, blocking=True)
        except KeyboardInterrupt:
            _ignore_stop_signals()
            log.info("shutting down")
            shutdown()


if __name__ == "__main__":
    main()
