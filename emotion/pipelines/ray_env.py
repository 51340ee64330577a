"""Connect to Ray: start the embedded local Ray or join a cluster, from config."""

from __future__ import annotations

import logging
import os

import ray

from emotion.settings import RaySettings

log = logging.getLogger(__name__)

# Variables Ray workers must see to reach S3-compatible stores, and the allocator switch
# (emotion/allocator.py); set before ray.init: workers inherit the driver's environment
# only through runtime_env.
_FORWARDED_ENV = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION",
    "AWS_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_EC2_METADATA_DISABLED",
    "EMOTION_CACHE", "EMOTION_MALLOC",
)


def forwarded_env() -> dict[str, str]:
    """The driver's storage-related variables, for a job's ``runtime_env``: workers of an
    already running Ray (a cluster, or a test's local Ray) do not inherit them otherwise."""
    return {k: os.environ[k] for k in _FORWARDED_ENV if k in os.environ}


# Ray Train's PlacementGroupCleaner (a detached actor every TorchTrainer starts) asks the
# State API once a second whether the controller is alive and logs this warning on every
# failed query. The State API is served by the dashboard, which the embedded Ray runs
# without (ray/local.yaml), so every poll fails: one line a second for the whole run.
PG_CLEANER_LOGGER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"
PG_CLEANER_POLL_FAILED = "Failed to query Ray Train Controller actor state"


class PlacementGroupCleanerPollFilter(logging.Filter):
    """Drops the cleaner's per-poll "Failed to query" warning; its other records (the
    controller died, a placement group could not be removed) pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(PG_CLEANER_POLL_FAILED)


def quiet_train_polling() -> None:
    """Ray worker setup hook: install the filter in this process. The warning is logged
    inside the cleaner actor and reaches the driver as forwarded text, never as a record
    of the driver's logging, so the filter must sit on the logger in the worker processes."""
    logger = logging.getLogger(PG_CLEANER_LOGGER)
    if not any(isinstance(f, PlacementGroupCleanerPollFilter) for f in logger.filters):
        logger.addFilter(PlacementGroupCleanerPollFilter())


# For init_ray(worker_setup_hook=...): a module path, so workers import only this module.
QUIET_TRAIN_POLLING_HOOK = f"{__name__}.quiet_train_polling"


def job_runtime_env(worker_setup_hook: str | None = None) -> dict | None:
    """The ``runtime_env`` of ``ray.init``: every process of the job (actors Ray Train
    starts included) gets the forwarded variables and runs the setup hook at start."""
    runtime_env: dict = {}
    env_vars = forwarded_env()
    if env_vars:
        runtime_env["env_vars"] = env_vars
    if worker_setup_hook:
        runtime_env["worker_process_setup_hook"] = worker_setup_hook
    return runtime_env or None


def init_ray(settings: RaySettings, worker_setup_hook: str | None = None,
             metrics_export_port: int | None = None) -> None:
    """Start or join Ray once per process, as the ``ray`` group says.

    ``settings.address``: null starts a local Ray (the embedded default); ``auto`` or
    ``host:port`` joins a running cluster (Ray's token, if auth is on, comes from
    ``RAY_AUTH_TOKEN`` or the token file as Ray documents). ``worker_setup_hook``: a
    function's module path that every worker process of the job runs at start.
    ``metrics_export_port``: where a local Ray serves its Prometheus metrics (None: a
    port Ray picks; a cluster's nodes set theirs with ``ray start --metrics-export-port``).
    """
    if ray.is_initialized():
        return
    kwargs = {
        "ignore_reinit_error": True,
        "runtime_env": job_runtime_env(worker_setup_hook),
        "log_to_driver": settings.log_to_driver,
    }
    if settings.address:
        ray.init(address=settings.address, **kwargs)
    else:
        ray.init(
            num_cpus=settings.num_cpus,
            num_gpus=settings.num_gpus,
            include_dashboard=settings.include_dashboard,
            object_store_memory=settings.object_store_memory,
            **({"_metrics_export_port": metrics_export_port} if metrics_export_port else {}),
            **kwargs,
        )
    log.info("Ray resources: %s", ray.cluster_resources())


def gpus_available() -> bool:
    """Whether the Ray cluster this process is connected to has GPUs."""
    return ray.cluster_resources().get("GPU", 0) > 0
