"""Connect to Ray: start the embedded local Ray or join a cluster, from config."""

from __future__ import annotations

import logging
import os
from typing import Mapping

import ray

log = logging.getLogger(__name__)

# Variables Ray workers must see to reach S3-compatible stores (set before ray.init:
# workers inherit the driver's environment only through runtime_env).
_FORWARDED_ENV = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION",
    "AWS_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_EC2_METADATA_DISABLED",
    "EMOTION_CACHE",
)


def forwarded_env() -> dict[str, str]:
    """The driver's storage-related variables, for a job's ``runtime_env``: workers of an
    already running Ray (a cluster, or a test's local Ray) do not inherit them otherwise."""
    return {k: os.environ[k] for k in _FORWARDED_ENV if k in os.environ}


def init_ray(cfg: Mapping) -> None:
    """Start or join Ray once per process.

    ``cfg.address``: null starts a local Ray (the embedded default); ``auto`` or
    ``host:port`` joins a running cluster (Ray's token, if auth is on, comes from
    ``RAY_AUTH_TOKEN`` or the token file as Ray documents).
    """
    if ray.is_initialized():
        return
    env_vars = forwarded_env()
    kwargs = {
        "ignore_reinit_error": True,
        "runtime_env": {"env_vars": env_vars} if env_vars else None,
        "log_to_driver": bool(cfg.get("log_to_driver", True)),
    }
    address = cfg.get("address")
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(
            num_cpus=cfg.get("num_cpus"),
            num_gpus=cfg.get("num_gpus"),
            include_dashboard=bool(cfg.get("include_dashboard", False)),
            object_store_memory=cfg.get("object_store_memory"),
            **kwargs,
        )
    log.info("Ray resources: %s", ray.cluster_resources())


def gpus_available() -> bool:
    return ray.cluster_resources().get("GPU", 0) > 0
