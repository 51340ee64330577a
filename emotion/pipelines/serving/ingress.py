"""The HTTP ingress: the FastAPI app and the ``EmotionAPI`` Serve deployment around it.

``EmotionAPI`` checks the bearer token, the content type and the limits, reads the
uploads and forwards each image to the recognizer (``deployment.EmotionRecognizer``)
through its handle. Also here: the API's errors (``APIError``, answered as
``{"error": code, "detail": reason}``), its documented response models, and the pure upload
checks and response helpers (``probe_image``, ``check_request_pixels``, ``upload_files``,
``source_name``, ``json_safe``, ``image_response``), testable without Ray.
"""

# No ``from __future__ import annotations``: FastAPI reads the route signatures at run time
# (it injects ``request`` by its ``Request`` annotation); keep the annotations real objects.

import asyncio
import hmac
import io
import logging
import math
import threading
import time
from typing import Any, AsyncIterator, Mapping, Optional, Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, Field
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

import emotion
from emotion.pipelines.serving.settings import Limits
from emotion.pipelines.serving.telemetry import MetricsMiddleware, in_flight, server_timing

log = logging.getLogger(__name__)

# Raster formats the service decodes. Others that Pillow can identify (EPS and PDF need
# external programs; ICO, PSD, ...) are refused with 415 before any decoding.
ACCEPTED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "PPM")
MULTIPART_OVERHEAD_BYTES = 64 * 1024  # boundaries and part headers around each file


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

# Ray's key-value store (GCS) key whose presence tells every ingress replica of an app to
# drain: `jobs/serve.py` sets it on SIGTERM, before Serve shuts down.
DRAIN_KEY_PREFIX = "emotion/serve/drain/"


def drain_key(app_name: str) -> str:
    return DRAIN_KEY_PREFIX + app_name


def in_flight_key(app_name: str, replica: str) -> str:
    """Where a draining ingress replica reports the requests it still holds."""
    return f"{DRAIN_KEY_PREFIX}{app_name}/in_flight/{replica}"


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


api.add_middleware(MetricsMiddleware)


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

    def __init__(self, recognizer: DeploymentHandle, limits: Limits, auth_token: Optional[str],
                 readiness_timeout_s: float, retry_after_s: int, drain_poll_s: float = 0.25):
        # One handle per method, made once (each attribute access builds a new one).
        self._methods = {name: getattr(recognizer, name) for name in ("recognize", "info", "stats")}
        self._limits = limits
        self._token = auth_token.encode() if auth_token else None
        self._readiness_timeout_s = readiness_timeout_s
        self._retry_after = {"Retry-After": str(retry_after_s)}
        self._draining = False
        self._stop_watch = threading.Event()
        context = serve.get_replica_context()
        # A thread, not a task: it needs no event loop, and a blocking key-value read
        # never delays a request.
        threading.Thread(target=self._watch_drain, args=(context.app_name, context.replica_id.unique_id,
                                                          drain_poll_s),
                         name="drain-watch", daemon=True).start()

    def __del__(self) -> None:
        self._stop_watch.set()

    def _watch_drain(self, app_name: str, replica: str, poll_s: float) -> None:
        """Sets ``_draining`` once the app's drain key appears; from then on reports the
        requests this replica still holds (``in_flight_key``) for the driver to wait on."""
        from ray.experimental.internal_kv import _internal_kv_get, _internal_kv_put

        key = drain_key(app_name)
        while not self._stop_watch.wait(poll_s):
            try:
                if not self._draining:
                    self._draining = _internal_kv_get(key) is not None
                if self._draining:
                    _internal_kv_put(in_flight_key(app_name, replica), str(in_flight()).encode(), overwrite=True)
            except Exception as exc:  # Ray going away: stop watching
                log.info("drain watch stopped: %r", exc)
                return

    # -- health (always open) ---------------------------------------------------------
    @api.get("/healthz", summary="the process is up")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @api.get("/readyz", summary="the model is loaded and answers", responses={503: _ERRORS[503]})
    async def readyz(self):
        if self._draining:
            return _error_response(503, "draining", "the service is shutting down", self._retry_after)
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
        start = time.perf_counter()
        self._admit(request)
        kind = self._content_kind(request, allow_raw=True)
        if kind == "raw":
            data = b"".join([chunk async for chunk in _bounded(request.stream(), self._limits.max_image_bytes, "image")])
            uploads = [("upload", data)]
        else:
            uploads = await self._read_files(request, max_files=1)
        bodies, timing = await self._recognize_all(uploads, start)
        return JSONResponse(bodies[0], headers={"Server-Timing": timing})

    @api.post("/v1/recognize:batch", summary="people and emotions in several images (multipart)",
              openapi_extra=_BATCH_BODY,
              responses={200: {"model": list[RecognizeResponse]}, **{k: _ERRORS[k] for k in (400, 401, 413, 415, 503)}})
    async def recognize_batch(self, request: Request) -> JSONResponse:
        start = time.perf_counter()
        self._admit(request)
        self._content_kind(request, allow_raw=False)
        uploads = await self._read_files(request, max_files=self._limits.max_batch_files)
        bodies, timing = await self._recognize_all(uploads, start)
        return JSONResponse(bodies, headers={"Server-Timing": timing})

    # -- helpers ------------------------------------------------------------------------
    def _admit(self, request: Request) -> None:
        """Refuse new work while draining (503, retry later), then check the token."""
        if self._draining:
            raise APIError(503, "draining", "the service is shutting down: retry on another instance or later",
                           headers=self._retry_after)
        self._authorize(request)

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

    async def _recognize_all(self, uploads: list[tuple[str, bytes]], start: float) -> tuple[list[dict], str]:
        """The answer to each upload, and the request's ``Server-Timing`` header value."""
        sizes = []
        for name, data in uploads:  # header reads only: nothing is decoded before both checks pass
            _, width, height = probe_image(data, name, self._limits.max_image_pixels)
            sizes.append((width, height))
        check_request_pixels(sizes, self._limits.max_request_pixels)
        sent = time.perf_counter()
        if len(uploads) == 1:
            results = [await self._call("recognize", *uploads[0])]
        else:
            results = await asyncio.gather(*[self._call("recognize", name, data) for name, data in uploads])
        returned = time.perf_counter()
        for result in results:
            body = result["response"]
            if "error" in body:
                status = 500 if body["error"] == "internal" else 400
                raise APIError(status, body["error"], body["detail"])
        # The images of one request run side by side: each phase is the longest among them.
        phases = {name: max(r["timing_ms"].get(name, 0.0) for r in results)
                  for name in ("queue", "decode", "detect", "recognise")}
        total, call = (time.perf_counter() - start) * 1000, (returned - sent) * 1000
        # handle: routing to a replica and the reply, outside the recognizer's own phases;
        # ingress: reading and checking the upload and writing the answer.
        phases["handle"] = max(0.0, call - sum(phases.values()))
        phases["ingress"] = total - call
        phases["total"] = total
        return [r["response"] for r in results], server_timing(phases, max(r["batch_size"] for r in results))

    async def _call(self, method: str, *args: Any) -> Any:
        try:
            return await self._methods[method].remote(*args)
        except BackPressureError:
            # The recognizer's queues are full: shed the request now rather than let it time out.
            raise APIError(503, "overloaded", "the model deployment is at capacity: retry later",
                           headers=self._retry_after) from None
        except Exception as exc:  # replica gone or still starting
            log.warning("recognizer.%s failed: %r", method, exc)
            raise APIError(503, "unavailable", f"the model deployment is not available: {type(exc).__name__}",
                           headers=self._retry_after) from None
