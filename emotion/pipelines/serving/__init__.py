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

Modules: ``settings`` (the ``serve`` config section, the serve job's settings, ``ServeArgs``
and ``resolve_config``),
``ingress`` (the FastAPI app and ``EmotionAPI`` deployment: auth, API errors, upload
checks and response bodies), ``deployment`` (the ``EmotionRecognizer`` model deployment)
and ``app`` (``build_app``, ``bind_app`` and the deployment options they apply). The names below are
re-exported, so ``emotion.pipelines.serving:build_app`` and
``from emotion.pipelines.serving import ...`` keep working.
"""

# The builder is ``app.build_app``; Serve reads its parameter annotation at run time, so
# app.py must not use ``from __future__ import annotations`` (see the note there).

from emotion.pipelines.serving.app import bind_app, build_app, ingress_options, recognizer_options
from emotion.pipelines.serving.deployment import EmotionRecognizer
from emotion.pipelines.serving.ingress import (
    ACCEPTED_FORMATS,
    MULTIPART_OVERHEAD_BYTES,
    APIError,
    EmotionAPI,
    ErrorBody,
    ImageSize,
    RecognizeResponse,
    api,
    check_request_pixels,
    image_response,
    json_safe,
    probe_image,
    source_name,
    upload_files,
)
from emotion.pipelines.serving.settings import (
    TOKEN_ENV,
    AppSettings,
    IngressOptions,
    Limits,
    RecognizerOptions,
    ServeArgs,
    ServeJobSettings,
    ServeSettings,
    resolve_config,
)

__all__ = [
    # settings
    "TOKEN_ENV", "Limits", "RecognizerOptions", "IngressOptions", "ServeSettings", "AppSettings", "ServeJobSettings",
    "ServeArgs", "resolve_config",
    # ingress
    "ACCEPTED_FORMATS", "MULTIPART_OVERHEAD_BYTES", "APIError", "ErrorBody", "ImageSize", "RecognizeResponse",
    "probe_image", "check_request_pixels", "upload_files", "source_name", "json_safe", "image_response",
    "api", "EmotionAPI",
    # deployment
    "EmotionRecognizer",
    # app
    "recognizer_options", "ingress_options", "build_app", "bind_app",
]
