"""Online serving on Ray Serve: an HTTP API that returns the tagging records of one image.

    client ─HTTP─▶ Serve proxy ─▶ EmotionAPI (FastAPI ingress: auth, limits, validation)
                                     └─ handle ─▶ EmotionRecognizer (@serve.batch:
                                                  decode + one predictor call per batch)

The recognizer builds the same predictor as tagging (``emotion.predictor.build_predictor``)
once per replica, so a served image gives the same records as a tagged one. Concurrent
requests are gathered by ``@serve.batch`` and go through the detector and the emotion
model as one batch.

Endpoints: ``POST /v1/recognize`` (multipart field ``file`` or a raw ``image/*`` body),
``POST /v1/recognize:batch`` (several multipart files, each as field ``file``),
``GET /v1/models``, ``GET /v1/stats``, ``GET /healthz``, ``GET /readyz`` (no model
details: those need auth, on ``/v1/models``); OpenAPI docs at ``/docs``.
Bad input gets a 4xx JSON body ``{"error": code, "detail": reason}``. The service never
fetches URLs that clients send: it only reads the uploaded bytes.

``build_app(ServeArgs)`` is a typed Serve application builder:
``serve run emotion.pipelines.serving:build_app`` (defaults), ``... config=serve.yaml``
or ``... overrides="detector=full_frame serve.recognizer.max_batch_size=32"``.
"""

# No ``from __future__ import annotations`` here: Serve reads the builder's parameter
# annotation at run time to turn ``args`` into ``ServeArgs``, which a string defeats.

import asyncio
import hmac
import io
import logging
import math
import os
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, AsyncIterator, Literal, Mapping, Optional, Sequence, Union

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

import emotion
from emotion.predictor import build_predictor

log = logging.getLogger(__name__)

TOKEN_ENV = "EMOTION_API_TOKEN"
# Raster formats the service decodes. Others that Pillow can identify (EPS and PDF need
# external programs; ICO, PSD, ...) are refused with 415 before any decoding.
ACCEPTED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "PPM")
MULTIPART_OVERHEAD_BYTES = 64 * 1024  # boundaries and part headers around each file


# -- settings ---------------------------------------------------------------------------
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Limits(_Strict):
    """What one request may carry (bigger inputs get 413 before the model sees them).

    How far images shrink before detection is the predictor's ``max_image_side``, as in
    tagging: one setting for every path.
    """

    max_image_bytes: int = Field(20 * 1024 * 1024, ge=1)
    max_image_pixels: int = Field(40_000_000, ge=1)
    # All images of one request together: a tiny PNG header can promise tens of megapixels,
    # and a batch of them would cost the recognizer the memory and time of their sum.
    max_request_pixels: int = Field(40_000_000, ge=1)
    max_batch_files: int = Field(16, ge=1)


class RecognizerOptions(_Strict):
    """The model deployment: dynamic batching and its replicas' resources."""

    max_batch_size: int = Field(16, ge=1)
    batch_wait_timeout_s: float = Field(0.01, ge=0)
    num_replicas: int = Field(1, ge=1)
    autoscaling_config: Optional[dict] = None  # replaces num_replicas when set
    max_ongoing_requests: int = Field(64, ge=1)
    max_queued_requests: int = -1  # -1: unbounded; a bound sheds load with 503
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: Union[float, Literal["auto"]] = "auto"  # auto: gpu_fraction when the cluster has GPUs
    gpu_fraction: float = Field(1.0, gt=0)
    torch_threads: int = Field(1, ge=1)


class IngressOptions(_Strict):
    num_replicas: int = Field(1, ge=1)
    autoscaling_config: Optional[dict] = None
    max_ongoing_requests: int = Field(256, ge=1)
    num_cpus: float = Field(0.25, ge=0)


class ServeSettings(_Strict):
    """The ``serve`` section of the config (``jobs/configs/serve/default.yaml``)."""

    # The section holds the bearer token: pydantic's messages would quote it (the field's
    # value, or the whole section for a model-level error). They still name field and reason.
    model_config = ConfigDict(hide_input_in_errors=True)

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    app_name: str = "emotion"
    route_prefix: str = "/"
    auth_token: Optional[SecretStr] = None  # or env EMOTION_API_TOKEN
    readiness_timeout_s: float = Field(5.0, gt=0)
    access_log: bool = True  # one log line per request and replica; off saves CPU under load
    # Ray Serve's high-throughput mode (HAProxy ingress, gRPC between replicas). Ray reads
    # it from the environment when its processes start: `jobs/serve.py` sets it for the
    # local Ray it starts; on a cluster, set RAY_SERVE_THROUGHPUT_OPTIMIZED=1 and
    # RAY_SERVE_ENABLE_HA_PROXY=1 on every node instead.
    throughput_optimized: bool = False
    limits: Limits = Limits()
    recognizer: RecognizerOptions = RecognizerOptions()
    ingress: IngressOptions = IngressOptions()

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
    """The full config (four sections, plain dicts) an application is built from."""
    from omegaconf import OmegaConf

    given = {name: getattr(args, name) for name in _SECTIONS if getattr(args, name) is not None}
    if len(given) == len(_SECTIONS) and args.config is None and not args.overrides:
        return given
    if args.config is not None:
        path = Path(args.config).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"serve config file {args.config!r} does not exist")
        base = OmegaConf.merge(OmegaConf.load(path), OmegaConf.from_dotlist(list(args.overrides)))
    else:
        base = _compose_default(list(args.overrides))
    merged = OmegaConf.to_container(OmegaConf.merge(base, given), resolve=True)
    missing = [name for name in ("detector", "model") if not merged.get(name)]
    if missing:
        raise ValueError(f"serve config has no {', '.join(missing)} section(s)")
    return {name: merged.get(name) or {} for name in _SECTIONS}


def _compose_default(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    import jobs

    config_dir = Path(jobs.__file__).resolve().parent / "configs"
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        return compose(config_name="serve", overrides=overrides)


# -- errors -----------------------------------------------------------------------------
class APIError(Exception):
    """A request the service refuses: becomes ``{"error": code, "detail": detail}``."""

    def __init__(self, status: int, code: str, detail: str, headers: Optional[dict] = None):
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers = status, code, detail, headers


class ErrorBody(BaseModel):
    error: str
    detail: str


class ImageSize(BaseModel):
    width: int
    height: int


class RecognizeResponse(BaseModel):
    """One image's answer (documents the API; responses are built without re-validation)."""

    model: str = Field(description="model name @ checkpoint hash prefix")
    labels: list[str] = Field(description="category names, in the order of each person's `scores`")
    image: ImageSize
    people: list[dict] = Field(description="one record of the tagging output schema per person")


_STATUS_CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
                 413: "payload_too_large", 415: "unsupported_media_type", 503: "unavailable"}


def _error_response(status: int, code: str, detail: str, headers: Optional[dict] = None) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


# -- upload checks (pure functions: testable without Ray) --------------------------------
def probe_image(data: bytes, name: str, max_pixels: int) -> tuple[str, int, int]:
    """Read only the image header: (format, width, height), or an ``APIError`` saying why not.

    Catches what can be refused cheaply in the ingress; truncated pixel data is found by
    the full decode in the recognizer.
    """
    if not data:
        raise APIError(400, "empty_body", f"{name}: empty file (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt, (width, height) = img.format, img.size
    except UnidentifiedImageError:
        raise APIError(400, "not_an_image", f"{name}: not an image file (format not recognised); "
                                            f"accepted formats: {', '.join(ACCEPTED_FORMATS)}") from None
    except Image.DecompressionBombError as exc:
        raise APIError(413, "image_too_large", f"{name}: {exc}") from None
    except Exception as exc:  # Pillow raises many types on broken headers
        raise APIError(400, "undecodable_image", f"{name}: cannot read the image header: {exc}") from None
    if fmt not in ACCEPTED_FORMATS:
        raise APIError(415, "unsupported_format",
                       f"{name}: image format {fmt} is not accepted; accepted formats: {', '.join(ACCEPTED_FORMATS)}")
    if width * height > max_pixels:
        raise APIError(413, "image_too_large",
                       f"{name}: image is {width}x{height} = {width * height} pixels, above the limit of {max_pixels}")
    return fmt, width, height


def check_request_pixels(sizes: Sequence[tuple[int, int]], max_pixels: int) -> int:
    """Total pixels of one request's images ``(width, height)``, or 413 above ``max_pixels``.

    The per-image limit alone lets a batch of tiny, highly compressed headers that each
    promise just under it make the recognizer decode many times that.
    """
    total = sum(width * height for width, height in sizes)
    if total > max_pixels:
        raise APIError(413, "image_too_large",
                       f"the request's {len(sizes)} image(s) hold {total} pixels together, above the per-request "
                       f"limit of {max_pixels}")
    return total


def upload_files(items: Sequence[tuple[str, Any]], field: str = "file") -> list[Any]:
    """The uploaded files of a parsed multipart body, all under ``field``, or a 400 saying why not.

    A file under another name is refused rather than skipped: a skipped image would be a
    missing answer the client does not notice.
    """
    files = [(key, value) for key, value in items if isinstance(value, UploadFile)]
    misnamed = sorted({key for key, _ in files if key != field})
    if misnamed:
        raise APIError(400, "wrong_field", f"file(s) sent under multipart field(s) {misnamed}: send each image "
                                           f"as field {field!r}")
    if not files:
        fields = sorted({key for key, _ in items})
        raise APIError(400, "no_file", f"no file in the multipart body (fields: {fields}); "
                                       f"send the image as field {field!r}")
    return [value for _, value in files]


def source_name(filename: Optional[str], default: str) -> str:
    """The ``source`` recorded for an upload: the client's file name without any folders."""
    base = (filename or "").replace("\\", "/").rsplit("/", 1)[-1].strip()
    return base[:255] or default


def json_safe(value: Any) -> Any:
    """Arrow records -> JSON-compatible values (NaN/inf become null: JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def image_response(records: Sequence[dict], info: Mapping[str, Any]) -> dict:
    """One image's records -> the API's response body (or an ``error`` entry)."""
    first = records[0]
    if first["error"] is not None:
        return {"error": "undecodable_image", "detail": f"{first['source']}: {first['error']}"}
    return {
        "model": info["id"],
        "labels": list(info["labels"]),
        "image": {"width": first["image_width"], "height": first["image_height"]},
        "people": [json_safe(r) for r in records if r["person_index"] is not None],
    }


def _resolve_num_gpus(options: RecognizerOptions) -> float:
    if options.num_gpus != "auto":
        return float(options.num_gpus)
    import ray

    if ray.is_initialized():
        has_gpu = ray.cluster_resources().get("GPU", 0) > 0
    else:
        # `serve run` calls the builder before it connects to Ray; it runs on the head node.
        import torch

        has_gpu = torch.cuda.is_available()
    return options.gpu_fraction if has_gpu else 0.0


# -- the model deployment ---------------------------------------------------------------
@serve.deployment(name="EmotionRecognizer")
class EmotionRecognizer:
    """Runs the predictor on batches of uploaded images.

    Batching parameters arrive as ``user_config`` (``reconfigure``), so a Serve config
    update can change them without reloading the model.
    """

    def __init__(self, predictor_cfg: dict, limits: dict, torch_threads: int = 1):
        import torch

        # Replicas share the machine with the proxy and the ingress: bound intra-op threads.
        torch.set_num_threads(int(torch_threads))
        self._limits = Limits.model_validate(limits)
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
        "detector": str(predictor_cfg["detector"].get("name", "retinaface")),
    }


# -- the HTTP ingress -------------------------------------------------------------------
api = FastAPI(
    title="emotion",
    version=emotion.__version__,
    description=(
        "Finds the people in an uploaded image and recognises each one's emotion. Responses "
        "hold the same per-person records as `emotion tag` writes to Parquet. Send the image "
        "bytes (multipart field `file`, or a raw `image/*` body): the service never fetches "
        "URLs. When a token is configured, `/v1` endpoints need `Authorization: Bearer <token>`."
    ),
)

_ERRORS = {code: {"model": ErrorBody, "description": desc} for code, desc in {
    400: "empty, truncated or non-image upload, or a file not under multipart field `file`",
    401: "missing or wrong bearer token",
    413: "image above the byte or pixel limit, images above the per-request pixel total, or too many files",
    415: "wrong content type or image format", 503: "model not available"}.items()}
_IMAGE_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                       "properties": {"file": {"type": "string", "format": "binary"}}}},
    "image/*": {"schema": {"type": "string", "format": "binary"}},
}}}
_BATCH_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
}}}


@api.exception_handler(APIError)
async def _on_api_error(request: Request, exc: APIError) -> JSONResponse:
    return _error_response(exc.status, exc.code, exc.detail, exc.headers)


@api.exception_handler(StarletteHTTPException)
async def _on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return _error_response(exc.status_code, _STATUS_CODES.get(exc.status_code, "http_error"), str(exc.detail),
                           getattr(exc, "headers", None))


@api.exception_handler(RequestValidationError)
async def _on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return _error_response(400, "bad_request", str(exc.errors()))


async def _bounded(stream: AsyncIterator[bytes], limit: int, what: str) -> AsyncIterator[bytes]:
    """Pass the body through, refusing it (413) as soon as it passes ``limit`` bytes."""
    total = 0
    async for chunk in stream:
        total += len(chunk)
        if total > limit:
            raise APIError(413, "payload_too_large", f"{what} is larger than the limit of {limit} bytes")
        yield chunk


@serve.deployment(name="EmotionAPI")
@serve.ingress(api)
class EmotionAPI:
    """Validates uploads and forwards each image to the recognizer through its handle."""

    def __init__(self, recognizer: DeploymentHandle, limits: dict, auth_token: Optional[str] = None,
                 readiness_timeout_s: float = 5.0):
        # One handle per method, made once (each attribute access builds a new one).
        self._methods = {name: getattr(recognizer, name) for name in ("recognize", "info", "stats")}
        self._limits = Limits.model_validate(limits)
        self._token = auth_token.encode() if auth_token else None
        self._readiness_timeout_s = readiness_timeout_s

    # -- health (always open) ---------------------------------------------------------
    @api.get("/healthz", summary="the process is up")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @api.get("/readyz", summary="the model is loaded and answers", responses={503: _ERRORS[503]})
    async def readyz(self):
        try:
            await asyncio.wait_for(self._call("info"), self._readiness_timeout_s)
        except (APIError, asyncio.TimeoutError) as exc:
            return _error_response(503, "not_ready", f"model deployment did not answer: {exc!r}")
        # Open to anyone: the model's name and checkpoint hash stay behind auth on /v1/models.
        return {"status": "ready"}

    # -- /v1 ----------------------------------------------------------------------------
    @api.get("/v1/models", summary="the served model", responses={401: _ERRORS[401]})
    async def models(self, request: Request) -> dict:
        self._authorize(request)
        return {"models": [await self._call("info")]}

    @api.get("/v1/stats", summary="batch sizes one recognizer replica ran", responses={401: _ERRORS[401]})
    async def stats(self, request: Request) -> dict:
        self._authorize(request)
        return await self._call("stats")

    # Answers are returned as JSONResponse: FastAPI's encoder and response-model check
    # would re-walk every record of every request in Python.
    @api.post("/v1/recognize", summary="people and emotions in one image", openapi_extra=_IMAGE_BODY,
              responses={200: {"model": RecognizeResponse}, **{k: _ERRORS[k] for k in (400, 401, 413, 415, 503)}})
    async def recognize(self, request: Request) -> JSONResponse:
        self._authorize(request)
        kind = self._content_kind(request, allow_raw=True)
        if kind == "raw":
            data = b"".join([chunk async for chunk in _bounded(request.stream(), self._limits.max_image_bytes, "image")])
            uploads = [("upload", data)]
        else:
            uploads = await self._read_files(request, max_files=1)
        return JSONResponse((await self._recognize_all(uploads))[0])

    @api.post("/v1/recognize:batch", summary="people and emotions in several images (multipart)",
              openapi_extra=_BATCH_BODY,
              responses={200: {"model": list[RecognizeResponse]}, **{k: _ERRORS[k] for k in (400, 401, 413, 415, 503)}})
    async def recognize_batch(self, request: Request) -> JSONResponse:
        self._authorize(request)
        self._content_kind(request, allow_raw=False)
        uploads = await self._read_files(request, max_files=self._limits.max_batch_files)
        return JSONResponse(await self._recognize_all(uploads))

    # -- helpers ------------------------------------------------------------------------
    def _authorize(self, request: Request) -> None:
        if self._token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        # compare_digest takes the same time wherever the strings differ.
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self._token):
            raise APIError(401, "unauthorized", "missing or wrong bearer token (Authorization: Bearer <token>)",
                           headers={"WWW-Authenticate": "Bearer"})

    def _content_kind(self, request: Request, allow_raw: bool) -> str:
        length = request.headers.get("content-length")
        if length is not None and length.strip() == "0":
            raise APIError(400, "empty_body", "the request body is empty: send an image")
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type == "multipart/form-data":
            return "multipart"
        if allow_raw and content_type.startswith("image/"):
            return "raw"
        if content_type == "application/json" or content_type.endswith("+json"):
            raise APIError(415, "unsupported_media_type",
                           "JSON bodies are not accepted, and the service never fetches URLs: upload the image "
                           "bytes as multipart field 'file'" + (" or as a raw image/* body" if allow_raw else ""))
        accepted = "multipart/form-data" + (" or image/*" if allow_raw else "")
        raise APIError(415, "unsupported_media_type",
                       f"content type {content_type or '(none)'!r} is not accepted; send {accepted}")

    async def _read_files(self, request: Request, max_files: int) -> list[tuple[str, bytes]]:
        limits = self._limits
        body_limit = max_files * (limits.max_image_bytes + MULTIPART_OVERHEAD_BYTES)
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > body_limit:
            raise APIError(413, "payload_too_large", f"request body of {length} bytes is larger than the limit "
                                                     f"of {body_limit} bytes")
        # Files spool to disk past 1 MB, so memory stays bounded whatever the body holds.
        parser = MultiPartParser(request.headers, _bounded(request.stream(), body_limit, "request body"),
                                 max_files=max_files, max_fields=16, max_part_size=64 * 1024)
        try:
            form = await parser.parse()
        except MultiPartException as exc:
            if exc.message.startswith("Too many files"):
                hint = " (use /v1/recognize:batch for several images)" if max_files == 1 else ""
                raise APIError(413, "too_many_files", f"at most {max_files} file(s) per request{hint}") from None
            raise APIError(400, "bad_multipart", f"malformed multipart body: {exc.message}") from None
        try:
            uploads = []
            for i, upload in enumerate(upload_files(form.multi_items())):
                name = source_name(upload.filename, "upload" if max_files == 1 else f"upload-{i}")
                if upload.size is not None and upload.size > limits.max_image_bytes:
                    raise APIError(413, "payload_too_large", f"{name}: {upload.size} bytes is larger than the "
                                                             f"limit of {limits.max_image_bytes} bytes")
                uploads.append((name, await upload.read()))
            return uploads
        finally:
            await form.close()

    async def _recognize_all(self, uploads: list[tuple[str, bytes]]) -> list[dict]:
        sizes = []
        for name, data in uploads:  # header reads only: nothing is decoded before both checks pass
            _, width, height = probe_image(data, name, self._limits.max_image_pixels)
            sizes.append((width, height))
        check_request_pixels(sizes, self._limits.max_request_pixels)
        if len(uploads) == 1:
            results = [await self._call("recognize", *uploads[0])]
        else:
            results = await asyncio.gather(*[self._call("recognize", name, data) for name, data in uploads])
        for result in results:
            if "error" in result:
                status = 500 if result["error"] == "internal" else 400
                raise APIError(status, result["error"], result["detail"])
        return results

    async def _call(self, method: str, *args: Any) -> Any:
        try:
            return await self._methods[method].remote(*args)
        except Exception as exc:  # replica gone, overloaded or still starting
            log.warning("recognizer.%s failed: %r", method, exc)
            raise APIError(503, "unavailable", f"the model deployment is not available: {type(exc).__name__}") from None


# -- application builder ----------------------------------------------------------------
def recognizer_options(options: RecognizerOptions, access_log: bool = True) -> dict:
    actor = {"num_cpus": options.num_cpus}
    num_gpus = _resolve_num_gpus(options)
    if num_gpus > 0:
        actor["num_gpus"] = num_gpus
    scaling = ({"autoscaling_config": options.autoscaling_config} if options.autoscaling_config
               else {"num_replicas": options.num_replicas})
    return {
        **scaling,
        "max_ongoing_requests": options.max_ongoing_requests,
        "max_queued_requests": options.max_queued_requests,
        "ray_actor_options": actor,
        "logging_config": {"enable_access_log": access_log},
        "user_config": {"max_batch_size": options.max_batch_size,
                        "batch_wait_timeout_s": options.batch_wait_timeout_s},
    }


def ingress_options(options: IngressOptions, access_log: bool = True) -> dict:
    scaling = ({"autoscaling_config": options.autoscaling_config} if options.autoscaling_config
               else {"num_replicas": options.num_replicas})
    return {**scaling, "max_ongoing_requests": options.max_ongoing_requests,
            "ray_actor_options": {"num_cpus": options.num_cpus}, "logging_config": {"enable_access_log": access_log}}


def build_app(args: ServeArgs) -> Application:
    """Typed Serve application builder: the ingress bound to the recognizer."""
    cfg = resolve_config(args)
    settings = ServeSettings.model_validate(cfg["serve"] or {})
    predictor_cfg = {name: cfg[name] for name in ("detector", "model", "predictor")}
    limits = settings.limits.model_dump()
    recognizer = EmotionRecognizer.options(**recognizer_options(settings.recognizer, settings.access_log)).bind(
        predictor_cfg, limits, settings.recognizer.torch_threads)
    return EmotionAPI.options(**ingress_options(settings.ingress, settings.access_log)).bind(
        recognizer, limits, settings.resolved_token(), settings.readiness_timeout_s)
