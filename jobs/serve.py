"""Serving job: ``emotion serve [overrides]`` (Hydra app) starts the HTTP API on Ray Serve.

The embedded default starts a local Ray and listens on 127.0.0.1:8000; ``ray=cluster``
joins a running cluster instead. Then:

    curl -F file=@photo.jpg localhost:8000/v1/recognize
"""

from __future__ import annotations

import logging
import os
import signal

import hydra
from omegaconf import DictConfig, OmegaConf
from ray import serve

from emotion.pipelines.ray_env import init_ray
from emotion.pipelines.serving import ServeArgs, ServeSettings, build_app
from jobs.user_errors import exit_on_user_error

log = logging.getLogger("emotion.serve")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run(cfg: DictConfig, blocking: bool = False) -> str:
    """Start Serve and deploy the app from a composed config; returns the base URL.

    ``blocking=True`` (the CLI) serves until Ctrl-C; tests call it non-blocking and shut
    Serve down themselves.
    """
    plain = OmegaConf.to_container(cfg, resolve=True)
    settings = ServeSettings.model_validate(plain["serve"])  # fail on a bad config before starting Ray
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


@hydra.main(config_path="configs", config_name="serve", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error(log):
        try:
            run(cfg, blocking=True)
        except KeyboardInterrupt:
            log.info("shutting down")
            serve.shutdown()


if __name__ == "__main__":
    main()
