"""Settings of the HTTP API: the ``serve`` config section (``ServeSettings`` with its
``Limits``, ``RecognizerOptions`` and ``IngressOptions``), the serve job's whole config
(``ServeJobSettings``), the arguments of the application builder (``ServeArgs``) and
``resolve_config``, which turns those into the full config (``detector``, ``model``,
``predictor``, ``serve``) an application is built from (``AppSettings``).

Pure pydantic and OmegaConf/Hydra: no Ray, FastAPI or model code.
"""

# No ``from __future__ import annotations``, like the rest of the package: ``ServeArgs`` is
# the annotation Serve reads at run time (app.build_app), and pydantic builds these models
# from their field annotations.

import os
from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from emotion.settings import PredictorConfig, RaySettings

TOKEN_ENV = "EMOTION_API_TOKEN"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Limits(_Strict):
    """What one request may carry (bigger inputs get 413 before the model sees them).

    How far images shrink before detection is the predictor's ``max_image_side``, as in
    tagging: one setting for every path.
    """

    max_image_bytes: int = Field(ge=1)
    max_image_pixels: int = Field(ge=1)
    # All images of one request together: a tiny PNG header can promise tens of megapixels,
    # and a batch of them would cost the recognizer the memory and time of their sum.
    max_request_pixels: int = Field(ge=1)
    max_batch_files: int = Field(ge=1)


class RecognizerOptions(_Strict):
    """The model deployment: continuous batching and its replicas' resources."""

    max_batch_size: int = Field(ge=1)
    # Only under load (requests queued while the last batch ran) may a batch wait this
    # long to fill; a request that reaches an idle replica runs at once.
    batch_wait_timeout_s: float = Field(ge=0)
    num_replicas: int = Field(ge=1)
    autoscaling_config: Optional[dict]  # replaces num_replicas when set
    max_ongoing_requests: int = Field(ge=1)
    max_queued_requests: int = Field(ge=-1)  # per ingress replica; -1: unbounded; past it: 503
    num_cpus: float = Field(ge=0)
    num_gpus: Union[float, Literal["auto"]]  # auto: gpu_fraction when the cluster has GPUs
    gpu_fraction: float = Field(gt=0)
    torch_threads: int = Field(ge=1)

    @field_validator("max_queued_requests")
    @classmethod
    def _queue_bound(cls, value: int) -> int:
        if value == 0:  # Serve takes -1 (unbounded) or a positive bound
            raise ValueError("max_queued_requests must be -1 (unbounded) or at least 1")
        return value


class IngressOptions(_Strict):
    num_replicas: int = Field(ge=1)
    autoscaling_config: Optional[dict]
    max_ongoing_requests: int = Field(ge=1)
    num_cpus: float = Field(ge=0)


class ServeSettings(_Strict):
    """The ``serve`` section of the config (``jobs/configs/serve/default.yaml`` holds every
    default)."""

    # The section holds the bearer token: pydantic's messages would quote it (the field's
    # value, or the whole section for a model-level error). They still name field and reason.
    model_config = ConfigDict(hide_input_in_errors=True)

    host: str
    port: int = Field(ge=0, le=65535)
    app_name: str
    route_prefix: str
    auth_token: Optional[SecretStr]  # or env EMOTION_API_TOKEN
    readiness_timeout_s: float = Field(gt=0)
    retry_after_s: int = Field(ge=0)  # the Retry-After of 503 answers (overloaded, draining)
    drain_timeout_s: float = Field(ge=0)  # on SIGTERM: the longest wait for in-flight requests
    # Ray's metrics export port (Prometheus text) of the local Ray this job starts; null: Ray picks one.
    metrics_export_port: Optional[int] = Field(ge=1, le=65535)
    # How long a stopping ingress replica keeps accepting in HAProxy mode, so a load
    # balancer in front can deregister it (Ray's RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S,
    # 30 s by Ray's default). Set for the local Ray this job starts, whose HAProxy the
    # controller updates directly.
    direct_ingress_drain_s: float = Field(ge=0)
    access_log: bool  # one log line per request and replica; off saves CPU under load
    # Ray Serve's high-throughput mode (HAProxy ingress, gRPC between replicas). Ray reads
    # it from the environment when its processes start: `jobs/serve.py` sets it for the
    # local Ray it starts; on a cluster, set RAY_SERVE_THROUGHPUT_OPTIMIZED=1 and
    # RAY_SERVE_ENABLE_HA_PROXY=1 on every node instead.
    throughput_optimized: bool
    limits: Limits
    recognizer: RecognizerOptions
    ingress: IngressOptions

    @field_validator("auth_token", mode="before")
    @classmethod
    def _token_as_text(cls, value: Any) -> Any:
        # Hydra and YAML read an all-digit token (`serve.auth_token=123456`) as an int, whose
        # text is the token. A float's text is not what was typed ("1e6" -> "1000000.0").
        if isinstance(value, (bool, float)):
            raise ValueError("serve.auth_token must be text; quote a token that reads as a number or "
                             "boolean (serve.auth_token=\"'<token>'\")")
        return str(value) if isinstance(value, int) else value

    @model_validator(mode="after")
    def _batch_fits_in_flight(self) -> "ServeSettings":
        rec = self.recognizer
        if rec.max_ongoing_requests < rec.max_batch_size:
            raise ValueError(
                f"serve.recognizer.max_ongoing_requests ({rec.max_ongoing_requests}) must be >= "
                f"max_batch_size ({rec.max_batch_size}), or batches can never fill"
            )
        return self

    def resolved_token(self) -> Optional[str]:
        token = self.auth_token.get_secret_value() if self.auth_token is not None else os.environ.get(TOKEN_ENV)
        return token or None


class AppSettings(PredictorConfig):
    """What an application is built from (``resolve_config``): the predictor's groups and
    ``serve``."""

    model_config = ConfigDict(hide_input_in_errors=True)  # `serve` holds the bearer token
    serve: ServeSettings


class ServeJobSettings(AppSettings):
    """The serve job's config: the application's groups and ``ray``, which the job uses to
    start or join Ray."""

    ray: RaySettings


class ServeArgs(_Strict):
    """Arguments of the typed application builder ``build_app``.

    Sections left out come from ``config`` (a YAML/JSON file with ``detector``, ``model``,
    ``predictor`` and ``serve`` sections, e.g. saved by ``emotion serve --cfg job``) or,
    without one, from the composed default ``jobs/configs/serve.yaml``; ``overrides`` are
    Hydra overrides applied to that (``"detector=full_frame serve.limits.max_batch_files=8"``).
    """

    # `serve` may hold the bearer token: keep it out of validation messages (see ServeSettings).
    model_config = ConfigDict(hide_input_in_errors=True)

    config: Optional[str] = None
    overrides: list[str] = []
    detector: Optional[dict] = None
    model: Optional[dict] = None
    predictor: Optional[dict] = None
    serve: Optional[dict] = None

    @field_validator("overrides", mode="before")
    @classmethod
    def _split_overrides(cls, value: Any) -> Any:
        # `serve run ... overrides="a=1 b=2"` passes one string.
        return value.split() if isinstance(value, str) else value


_SECTIONS = ("detector", "model", "predictor", "serve")


def resolve_config(args: ServeArgs) -> dict:
    """The full config (four sections, plain dicts) an application is built from.

    A saved config file may predate keys of the ``predictor`` and ``serve`` groups: those
    take their YAML defaults (``jobs/configs/predictor``, ``jobs/configs/serve``)."""
    from omegaconf import OmegaConf

    given = {name: getattr(args, name) for name in _SECTIONS if getattr(args, name) is not None}
    if len(given) == len(_SECTIONS) and args.config is None and not args.overrides:
        return given
    if args.config is not None:
        path = Path(args.config).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"serve config file {args.config!r} does not exist")
        defaults = _compose_default([])
        base = OmegaConf.merge({"predictor": defaults.predictor, "serve": defaults.serve}, OmegaConf.load(path),
                               OmegaConf.from_dotlist(list(args.overrides)))
    else:
        base = _compose_default(list(args.overrides))
    merged = OmegaConf.to_container(OmegaConf.merge(base, given), resolve=True)
    missing = [name for name in ("detector", "model") if not merged.get(name)]
    if missing:
        raise ValueError(f"serve config has no {', '.join(missing)} section(s)")
    return {name: merged.get(name) or {} for name in _SECTIONS}


# The jobs' Hydra configs: installed beside the ``emotion`` package (``jobs/configs``,
# package data), read as files so the library does not import the entry-point package.
_CONFIG_DIR = Path(__file__).resolve().parents[3] / "jobs" / "configs"


def _compose_default(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(_CONFIG_DIR), version_base="1.3"):
        return compose(config_name="serve", overrides=overrides)
