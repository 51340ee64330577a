"""The HTTP API on a real local Ray Serve with the real pretrained models (retinaface + fer).

One app starts for the module (and a second one with a bearer token); the responses are
compared with the tagging predictor run in this process on the same bytes.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest
import requests
from hydra import compose, initialize_config_dir
from PIL import Image
from starlette.datastructures import UploadFile

from emotion.labels import FERPLUS_CLASSES
from emotion.client import EmotionAPIError, EmotionClient
from emotion.schema import split_rows
from emotion.weights import KNOWN_WEIGHTS
from emotion.pipelines.serving import (
    APIError,
    ServeArgs,
    ServeSettings,
    build_app,
    check_request_pixels,
    json_safe,
    probe_image,
    resolve_config,
    source_name,
    upload_files,
)
from tests.configs import full_frame_detector, serve_section
from tests.conftest import PROJECT_ROOT, jpeg_bytes

CONFIG_DIR = str(PROJECT_ROOT / "jobs" / "configs")
TOKEN = "s3cret-token"
MAX_IMAGE_BYTES = 1_000_000
MAX_PIXELS = 4_000_000
MAX_REQUEST_PIXELS = 10_000_000
MAX_FILES = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def compose_serve(overrides: list[str]):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="serve", overrides=overrides)


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def bilevel_png(width: int, height: int) -> bytes:
    """A 1-bit blank PNG: a few hundred bytes that promise width x height pixels."""
    buffer = io.BytesIO()
    Image.new("1", (width, height)).save(buffer, format="PNG")
    return buffer.getvalue()


# -- fixtures ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def served_cfg():
    return compose_serve([
        f"serve.port={free_port()}",
        "serve.recognizer.num_cpus=0.5", "serve.recognizer.torch_threads=1",
        "serve.recognizer.batch_wait_timeout_s=0.05", "serve.recognizer.max_batch_size=16",
        "serve.ingress.num_cpus=0.1",
        f"serve.limits.max_image_bytes={MAX_IMAGE_BYTES}", f"serve.limits.max_image_pixels={MAX_PIXELS}",
        f"serve.limits.max_request_pixels={MAX_REQUEST_PIXELS}", f"serve.limits.max_batch_files={MAX_FILES}",
        "detector.device=cpu", "model.device=cpu",
    ])


@pytest.fixture(scope="module")
def service(ray_local, served_cfg):
    """Base URL of the app started by `jobs.serve.run` (non-blocking); Serve stops at module end."""
    from ray import serve

    from jobs.serve import run

    url = run(served_cfg)
    yield url
    serve.shutdown()


@pytest.fixture(scope="module")
def secure_service(service, served_cfg):
    """A second app with a bearer token (light: full-frame detector), under /secure."""
    from omegaconf import OmegaConf
    from ray import serve

    plain = OmegaConf.to_container(served_cfg, resolve=True)
    plain["detector"] = full_frame_detector(find_face=False)
    plain["serve"]["auth_token"] = TOKEN
    app = build_app(ServeArgs(**{k: plain[k] for k in ("detector", "model", "predictor", "serve")}))
    serve.run(app, name="secure", route_prefix="/secure")
    yield service + "/secure"
    serve.delete("secure")


@pytest.fixture(scope="module")
def local_predictor(served_cfg):
    import torch
    from omegaconf import OmegaConf

    from emotion.predictor import build_predictor

    torch.set_num_threads(1)
    return build_predictor(OmegaConf.to_container(served_cfg, resolve=True))


@pytest.fixture(scope="module")
def photos(sample_photos) -> dict[str, bytes]:
    return {f"{name}.jpg": path.read_bytes() for name, path in sample_photos.items()}


def post_file(url: str, name: str, data: bytes, **kwargs) -> requests.Response:
    return requests.post(url + "/v1/recognize", files={"file": (name, data, "image/jpeg")}, timeout=60, **kwargs)


def assert_same_records(served: list[dict], expected: list[dict]) -> None:
    assert len(served) == len(expected)
    for got, want in zip(served, expected):
        assert got.keys() == want.keys()
        for key, value in want.items():
            if key in ("scores", "detector_score", "level_scores", "vad"):
                np.testing.assert_allclose(_floats(got[key]), _floats(value), atol=1e-5, err_msg=key)
            elif key in ("face_box", "body_box"):
                np.testing.assert_allclose(got[key], value, atol=1e-3, err_msg=key)  # pixels
            else:
                assert got[key] == value, key


def _floats(value) -> np.ndarray:
    if isinstance(value, dict):
        return np.concatenate([_floats(v) for _, v in sorted(value.items())])
    if value is None:
        return np.array([np.nan])
    return np.atleast_1d(np.asarray(value, dtype=np.float64))


# -- results equal the tagging predictor --------------------------------------------------
def test_recognize_returns_the_tagging_records(service, local_predictor, photos):
    for name, data in photos.items():
        response = post_file(service, name, data)
        assert response.status_code == 200, response.text
        body = response.json()
        table = local_predictor.predict_bytes([name], [data])
        expected = [r for r in table.to_pylist() if r["person_index"] is not None]
        assert body["model"] == table.schema.metadata[b"emotion.model"].decode()
        assert body["labels"] == list(FERPLUS_CLASSES)  # the default face model: QCS on FER+
        with Image.open(io.BytesIO(data)) as img:
            assert body["image"] == {"width": img.width, "height": img.height}
        assert expected, f"the detector finds nobody in {name}"
        assert_same_records(body["people"], expected)
        assert all(p["source"] == name and p["error"] is None for p in body["people"])

    # A raw image/* body gives the same people, recorded with source "upload".
    raw = requests.post(service + "/v1/recognize", data=photos["obama.jpg"],
                        headers={"Content-Type": "image/jpeg"}, timeout=60)
    assert raw.status_code == 200, raw.text
    expected = local_predictor.predict_bytes(["upload"], [photos["obama.jpg"]]).to_pylist()
    assert_same_records(raw.json()["people"], expected)


def test_image_without_people_gives_empty_list(service):
    blank = jpeg_bytes(np.full((240, 320, 3), 128, np.uint8))
    response = post_file(service, "blank.jpg", blank)
    assert response.status_code == 200, response.text
    assert response.json()["people"] == []
    assert response.json()["image"] == {"width": 320, "height": 240}


def test_batch_endpoint_answers_each_file_in_order(service, photos):
    names = list(photos)
    files = [("file", (name, photos[name], "image/jpeg")) for name in names]
    response = requests.post(service + "/v1/recognize:batch", files=files, timeout=60)
    assert response.status_code == 200, response.text
    results = response.json()
    assert [r["people"][0]["source"] for r in results] == names
    for name, result in zip(names, results):
        single = post_file(service, name, photos[name]).json()
        assert_same_records(result["people"], single["people"])


# -- bad input: 4xx with a JSON reason, and the service keeps answering ---------------------
def _ico_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(buffer, format="ICO")
    return buffer.getvalue()


def _chunks(data: bytes, size: int = 64 * 1024):
    for start in range(0, len(data), size):
        yield data[start:start + size]


BAD_REQUESTS = {
    # name: (request kwargs builder, endpoint, expected status, expected error code)
    "empty raw body": (lambda p: {"data": b"", "headers": {"Content-Type": "image/jpeg"}}, "", 400, "empty_body"),
    "empty file": (lambda p: {"files": {"file": ("e.jpg", b"", "image/jpeg")}}, "", 400, "empty_body"),
    "text as image": (lambda p: {"data": b"just text\n" * 50, "headers": {"Content-Type": "image/jpeg"}},
                      "", 400, "not_an_image"),
    "truncated jpeg": (lambda p: {"files": {"file": ("t.jpg", p["obama.jpg"][: len(p["obama.jpg"]) // 2])}},
                       "", 400, "undecodable_image"),
    "unsupported format": (lambda p: {"files": {"file": ("x.ico", _ico_bytes())}}, "", 415, "unsupported_format"),
    "too many pixels": (lambda p: {"files": {"file": ("big.png", png_bytes(np.zeros((2100, 2100, 3), np.uint8)))}},
                        "", 413, "image_too_large"),
    "too many bytes": (lambda p: {"data": b"\xff" * (MAX_IMAGE_BYTES + 1), "headers": {"Content-Type": "image/jpeg"}},
                       "", 413, "payload_too_large"),
    "too many bytes, chunked": (lambda p: {"data": _chunks(b"\xff" * (3 * MAX_IMAGE_BYTES)),
                                           "headers": {"Content-Type": "image/jpeg"}}, "", 413, "payload_too_large"),
    "too many bytes, multipart": (lambda p: {"files": {"file": ("big.jpg", b"\xff" * (MAX_IMAGE_BYTES + 1000))}},
                                  "", 413, "payload_too_large"),
    "wrong content type": (lambda p: {"data": p["obama.jpg"], "headers": {"Content-Type": "text/plain"}},
                           "", 415, "unsupported_media_type"),
    "json with url": (lambda p: {"json": {"url": "http://127.0.0.1:1/photo.jpg"}}, "", 415, "unsupported_media_type"),
    "multipart without file": (lambda p: {"files": {"note": (None, "hello")}}, "", 400, "no_file"),
    "file under another field": (lambda p: {"files": {"image": ("a.jpg", p["obama.jpg"], "image/jpeg")}},
                                 "", 400, "wrong_field"),
    "batch file under another field": (lambda p: {"files": [("file", ("a.jpg", p["obama.jpg"])),
                                                            ("photo", ("b.jpg", p["obama.jpg"]))]},
                                       ":batch", 400, "wrong_field"),
    # Each 3 MP header passes the per-image limit (4 MP); four of them pass the 10 MP request total.
    "too many pixels in one request": (lambda p: {"files": [("file", (f"{i}.png", bilevel_png(2000, 1500)))
                                                            for i in range(4)]}, ":batch", 413, "image_too_large"),
    "two files to single": (lambda p: {"files": [("file", ("a.jpg", p["obama.jpg"])), ("file", ("b.jpg", p["obama.jpg"]))]},
                            "", 413, "too_many_files"),
    "too many files in batch": (lambda p: {"files": [("file", (f"{i}.jpg", p["obama.jpg"])) for i in range(MAX_FILES + 1)]},
                                ":batch", 413, "too_many_files"),
    "raw body to batch": (lambda p: {"data": p["obama.jpg"], "headers": {"Content-Type": "image/jpeg"}},
                          ":batch", 415, "unsupported_media_type"),
    "one bad file in batch": (lambda p: {"files": [("file", ("ok.jpg", p["obama.jpg"])), ("file", ("bad.jpg", b"nope"))]},
                              ":batch", 400, "not_an_image"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_input_gets_4xx_with_json_reason(service, photos, case):
    build, suffix, status, code = BAD_REQUESTS[case]
    response = requests.post(service + "/v1/recognize" + suffix, timeout=60, **build(photos))
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code and body["detail"], body
    if case == "json with url":
        assert "never fetches URLs" in body["detail"]
    if case == "one bad file in batch":
        assert "bad.jpg" in body["detail"]
    if "another field" in case:
        assert "'file'" in body["detail"] and ("'image'" in body["detail"] or "'photo'" in body["detail"])
    if case == "too many pixels in one request":
        assert str(4 * 2000 * 1500) in body["detail"] and str(MAX_REQUEST_PIXELS) in body["detail"]


def test_damaged_exif_still_gets_an_answer(service, poison_exif_jpeg):
    # Pillow's exif_transpose raises struct.error/TypeError on this EXIF block: the pixels
    # are intact, so the image is answered as stored, never with a 500.
    response = post_file(service, "poison_exif.jpg", poison_exif_jpeg)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"model", "labels", "image", "people"}
    with Image.open(io.BytesIO(poison_exif_jpeg)) as img:
        assert body["image"] == {"width": img.width, "height": img.height}
    assert len(body["people"]) == 1  # obama.jpg, as stored
    assert all(p["source"] == "poison_exif.jpg" and p["error"] is None for p in body["people"])


def test_service_still_answers_after_bad_input(service, photos):
    # Runs after the parametrized cases above (pytest keeps file order).
    assert requests.get(service + "/healthz", timeout=10).json() == {"status": "ok"}
    assert post_file(service, "obama.jpg", photos["obama.jpg"]).status_code == 200
    wrong_method = requests.get(service + "/v1/recognize", timeout=10)
    assert wrong_method.status_code == 405 and wrong_method.json()["error"] == "method_not_allowed"


# -- batching, models, health -----------------------------------------------------------
def test_concurrent_requests_are_batched(service, photos):
    before = requests.get(service + "/v1/stats", timeout=10).json()
    data = photos["obama.jpg"]

    def one(i: int) -> int:
        return post_file(service, f"c{i}.jpg", data).status_code

    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(one, range(16)))
    assert statuses == [200] * 16
    after = requests.get(service + "/v1/stats", timeout=10).json()
    assert after["requests"] - before["requests"] == 16
    new_batches = after["batches"] - before["batches"]
    assert new_batches < 16, f"16 concurrent requests ran as {new_batches} batches: {after}"
    assert max(after["recent_batch_sizes"][-new_batches:]) > 1
    assert after["max_batch_size"] == 16


def test_models_health_and_docs(service):
    models = requests.get(service + "/v1/models", timeout=10).json()["models"]
    assert len(models) == 1
    model = models[0]
    assert model["name"] == "face_ensemble" and model["multi_label"] is False
    assert model["checkpoint_hash"] == KNOWN_WEIGHTS["qcs_ensemble"].sha256
    assert model["id"] == f"face_ensemble@sha256:{model['checkpoint_hash'][:16]}"
    assert model["labels"][1] == "happiness" and model["detector"] == "retinaface"
    # Readiness is open to anyone, so it names no model (that needs auth, on /v1/models).
    assert requests.get(service + "/readyz", timeout=10).json() == {"status": "ready"}
    assert requests.get(service + "/docs", timeout=10).status_code == 200
    paths = requests.get(service + "/openapi.json", timeout=10).json()["paths"]
    assert {"/v1/recognize", "/v1/recognize:batch", "/v1/models", "/healthz", "/readyz"} <= set(paths)


# -- auth -------------------------------------------------------------------------------
def test_bearer_token_guards_v1_only(secure_service, photos):
    url = secure_service
    data = photos["obama.jpg"]
    missing = post_file(url, "obama.jpg", data)
    assert missing.status_code == 401 and missing.json()["error"] == "unauthorized"
    assert missing.headers["WWW-Authenticate"] == "Bearer"
    wrong = requests.get(url + "/v1/models", headers={"Authorization": "Bearer nope"}, timeout=10)
    assert wrong.status_code == 401
    good = post_file(url, "obama.jpg", data, headers={"Authorization": f"Bearer {TOKEN}"})
    assert good.status_code == 200 and len(good.json()["people"]) == 1  # full frame: one person per image
    assert requests.get(url + "/healthz", timeout=10).status_code == 200
    ready = requests.get(url + "/readyz", timeout=10)
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}

    assert EmotionClient(url, token=TOKEN).models()[0]["detector"] == "full_frame"
    with pytest.raises(EmotionAPIError) as err:
        EmotionClient(url).models()
    assert err.value.status == 401 and err.value.error == "unauthorized"


def serve_settings(**changes) -> ServeSettings:
    """The default ``serve`` section with ``changes``, validated."""
    return ServeSettings.model_validate(serve_section(**changes))


def test_token_comes_from_config_or_environment(monkeypatch):
    monkeypatch.delenv("EMOTION_API_TOKEN", raising=False)
    assert serve_settings().resolved_token() is None
    monkeypatch.setenv("EMOTION_API_TOKEN", "from-env")
    assert serve_settings().resolved_token() == "from-env"
    assert serve_settings(auth_token="from-config").resolved_token() == "from-config"
    assert "from-config" not in repr(serve_settings(auth_token="from-config"))


def test_numeric_token_is_its_text_and_never_echoed(monkeypatch):
    from omegaconf import OmegaConf

    monkeypatch.delenv("EMOTION_API_TOKEN", raising=False)
    assert serve_settings(auth_token=123456).resolved_token() == "123456"
    # `serve.auth_token=123456` on the command line: Hydra hands over an int.
    composed = OmegaConf.to_container(compose_serve(["serve.auth_token=123456"]), resolve=True)["serve"]
    assert composed["auth_token"] == 123456
    assert ServeSettings.model_validate(composed).resolved_token() == "123456"
    # A float's text is not what was typed (1e6 -> "1000000.0"): refused, asking for quotes.
    with pytest.raises(ValueError, match="quote"):
        serve_settings(auth_token=1e6)

    secret = "tok-4815162342"
    failing = [
        {"auth_token": secret, "recognizer": {"max_batch_size": 32, "max_ongoing_requests": 8}},  # model check
        {"auth_token": [secret]},  # wrong type for the token itself
        {"auth_token": secret, "port": "http"},
        {"auth_token": secret, "limits": {"max_image_byts": 1}},
    ]
    for section in failing:
        with pytest.raises(ValueError) as err:
            serve_settings(**section)
        assert secret not in str(err.value), str(err.value)
    with pytest.raises(ValueError) as err:
        serve_settings(auth_token=123456, recognizer={"max_batch_size": 32, "max_ongoing_requests": 8})
    assert "123456" not in str(err.value) and "max_ongoing_requests" in str(err.value)
    with pytest.raises(ValueError) as err:
        ServeArgs.model_validate({"serve": f"auth_token={secret}"})
    assert secret not in str(err.value)


# -- client -----------------------------------------------------------------------------
def test_client_api_and_command(service, sample_photos, capsys):
    client = EmotionClient(service, timeout=60)
    assert client.health() == {"status": "ok"}
    one = client.recognize(sample_photos["obama"])
    assert one["people"][0]["source"] == "obama.jpg"
    assert client.recognize(sample_photos["obama"].read_bytes(), filename="x.jpg")["people"][0]["source"] == "x.jpg"
    many = client.recognize_batch([sample_photos["obama"], sample_photos["trump"]])
    assert [r["people"][0]["source"] for r in many] == ["obama.jpg", "trump.jpg"]
    with pytest.raises(EmotionAPIError) as err:
        client.recognize(b"definitely not an image")
    assert err.value.status == 400 and err.value.error == "not_an_image"
    with pytest.raises(EmotionAPIError) as err:
        EmotionClient(f"http://127.0.0.1:{free_port()}", timeout=5).health()
    assert err.value.status is None

    from emotion.client import main

    main([str(sample_photos["obama"]), "--url", service])
    line = capsys.readouterr().out.strip().splitlines()[0]
    assert line.startswith(f"{sample_photos['obama']}\tperson 0\tbox [") and one["people"][0]["emotions"][0] in line
    main([str(sample_photos["obama"]), "--url", service, "--json"])
    assert json.loads(capsys.readouterr().out)["people"][0]["person_index"] == 0


# -- pure helpers (no Ray) --------------------------------------------------------------
def test_probe_image_reasons():
    good = jpeg_bytes(np.zeros((20, 30, 3), np.uint8))
    assert probe_image(good, "a.jpg", 1000) == ("JPEG", 30, 20)
    cases = [(b"", 400, "empty_body"), (b"%PDF-1.4 not really", 400, "not_an_image"),
             (_ico_bytes(), 415, "unsupported_format"), (good, 413, "image_too_large")]
    for data, status, code in cases:
        with pytest.raises(APIError) as err:
            probe_image(data, "f", 100)
        assert (err.value.status, err.value.code) == (status, code)
        assert err.value.detail.startswith("f: ")


def test_request_pixels_are_limited_in_total():
    assert check_request_pixels([(3000, 1000)] * 3, 10_000_000) == 9_000_000
    with pytest.raises(APIError) as err:
        check_request_pixels([(3000, 1000)] * 4, 10_000_000)
    assert (err.value.status, err.value.code) == (413, "image_too_large")
    assert "12000000" in err.value.detail and "10000000" in err.value.detail
    # A header read, no decode: a 1-bit 6000x6000 PNG is well under a kilobyte.
    tiny = bilevel_png(6000, 6000)
    assert len(tiny) < 10_000 and probe_image(tiny, "t.png", 40_000_000) == ("PNG", 6000, 6000)


def test_only_field_file_carries_images():
    def upload(name: str) -> UploadFile:
        return UploadFile(io.BytesIO(b"bytes"), filename=name)

    a, b = upload("a.jpg"), upload("b.jpg")
    assert upload_files([("file", a), ("note", "text"), ("file", b)]) == [a, b]
    for items, code, named in [([("image", a)], "wrong_field", "'image'"),
                               ([("file", a), ("photo", b)], "wrong_field", "'photo'"),
                               ([("note", "text")], "no_file", "'note'"),
                               ([("file", "text, not a file")], "no_file", "'file'")]:
        with pytest.raises(APIError) as err:
            upload_files(items)
        assert (err.value.status, err.value.code) == (400, code)
        assert named in err.value.detail and "field 'file'" in err.value.detail


def test_helpers():
    assert source_name("C:\\photos\\me.jpg", "upload") == "me.jpg"
    assert source_name("../../etc/passwd", "upload") == "passwd"
    assert source_name(None, "upload") == "upload" and source_name("  ", "u-1") == "u-1"
    assert json_safe({"a": [1.0, math.nan], "b": {"c": math.inf}}) == {"a": [1.0, None], "b": {"c": None}}
    # Rows go to their image by image_index, whatever their order.
    table = pa.table({"x": [1, 2, 3, 4]})
    assert [t.column("x").to_pylist() for t in split_rows(table, np.array([2, 0, 2, 1]), 3)] == [[2], [4], [1, 3]]
    with pytest.raises(ValueError, match="max_ongoing_requests"):
        serve_settings(recognizer={"max_batch_size": 32, "max_ongoing_requests": 8})
    with pytest.raises(ValueError):
        serve_settings(limits={"max_image_byts": 1})  # typos are errors, not silently ignored
    with pytest.raises(ValueError, match="max_queued_requests"):
        serve_settings(recognizer={"max_queued_requests": 0})


def test_typed_builder_takes_serve_run_arguments():
    """`serve run emotion.pipelines.serving:build_app overrides=...` passes strings; Serve
    turns them into ServeArgs because build_app is annotated with it."""
    from ray.serve import Application
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

    app = call_user_app_builder_with_args_if_necessary(
        build_app, {"overrides": "detector=full_frame serve.recognizer.max_batch_size=8 serve.recognizer.num_gpus=0"})
    assert isinstance(app, Application)
    cfg = resolve_config(ServeArgs(overrides=["detector=full_frame", "serve.limits.max_batch_files=3"]))
    assert cfg["detector"]["name"] == "full_frame" and cfg["serve"]["limits"]["max_batch_files"] == 3
    assert cfg["model"]["name"] == "face_ensemble" and cfg["model"]["checkpoint"] == "qcs_ensemble"
    with pytest.raises(FileNotFoundError):
        resolve_config(ServeArgs(config="/nonexistent/serve.yaml"))


# -- stopping -----------------------------------------------------------------------------
def test_shutdown_waits_for_serve_only_so_long(monkeypatch):
    """Serve's shutdown is given up after the wait; with the GCS gone the process exits
    without ray.shutdown() (which would wait on the dead GCS too)."""
    import jobs.serve as job

    async def never_done() -> None:
        await asyncio.sleep(3600)

    calls: list[str] = []
    gcs_up = [True]
    monkeypatch.setattr(job, "serve", SimpleNamespace(shutdown_async=never_done))
    monkeypatch.setattr(job, "ray", SimpleNamespace(
        is_initialized=lambda: True, get_runtime_context=lambda: SimpleNamespace(gcs_address="127.0.0.1:1"),
        shutdown=lambda: calls.append("ray.shutdown")))
    monkeypatch.setattr(job, "_reachable", lambda address: gcs_up[0])
    monkeypatch.setattr(job, "_exit_now", lambda: sys.exit(0))  # the real one is os._exit(0)

    start = time.monotonic()
    job.shutdown(wait_s=0.5)
    assert time.monotonic() - start < 3 and calls == ["ray.shutdown"]

    calls.clear()
    gcs_up[0] = False
    start = time.monotonic()
    with pytest.raises(SystemExit) as exited:
        job.shutdown(wait_s=30)  # the GCS is gone: no waiting for Serve at all
    assert time.monotonic() - start < 3 and exited.value.code == 0 and calls == []


@pytest.mark.integration
@pytest.mark.slow  # starts its own Ray and models: about a minute on a busy 2-core machine
def test_sigterm_to_the_process_group_stops_serve_fast(tmp_path):
    """`kill -TERM -<pgid>` (a process manager stopping the group) reaches Ray's processes
    as well as the driver: all of them are gone within 15 s, and the driver exits 0."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own local Ray
    with open(tmp_path / "serve.log", "wb") as log:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "emotion"), "serve", f"serve.port={port}"],
                                cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not _answers(f"http://127.0.0.1:{port}/healthz"):
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the server did not come up within 300 s"
            time.sleep(1)
        start = time.monotonic()
        os.killpg(proc.pid, signal.SIGTERM)
        while _group_alive(proc) and time.monotonic() - start < 60:
            time.sleep(0.1)
        took = time.monotonic() - start
        output = (tmp_path / "serve.log").read_text()
        assert took < 15, f"the process group took {took:.1f} s to stop:\n{output[-3000:]}"
        assert proc.returncode == 0, output[-3000:]
        assert "Controller failed to shut down" not in output and "Traceback" not in output
    finally:
        if _group_alive(proc):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def _group_alive(proc: subprocess.Popen) -> bool:
    proc.poll()  # reap the leader: a zombie still counts as a member of its group
    try:
        os.killpg(proc.pid, 0)
        return True
    except ProcessLookupError:
        return False


# -- one image, the same records on every path ---------------------------------------------
COMPARED = ("person_index", "face_box", "body_box", "detector_score", "scores", "level_scores", "emotions",
            "image_width", "image_height", "model", "error")


def _compare(got: list[dict], want: list[dict], path: str, score_atol: float = 1e-5) -> None:
    assert len(got) == len(want) and got, path
    for g, w in zip(got, want):
        for key in COMPARED:
            if key in ("face_box", "body_box"):
                np.testing.assert_allclose(g[key], w[key], atol=1e-4, err_msg=f"{path}: {key}")
            elif key in ("scores", "detector_score", "level_scores"):
                np.testing.assert_allclose(_floats(g[key]), _floats(w[key]), atol=score_atol, err_msg=f"{path}: {key}")
            else:
                assert g[key] == w[key], f"{path}: {key}"


@pytest.mark.parametrize("changed", [(), ("predictor.max_image_side=400", "predictor.align_faces=true",
                                          "predictor.score_weights={neutral:0.6}")],
                         ids=["defaults", "max_image_side=400,align_faces=true,score_weights"])
def test_one_image_gives_the_same_records_from_tag_http_eval_and_predictor(service, served_cfg, photos, tmp_path,
                                                                           changed):
    """The same bytes through `emotion tag`, the HTTP API, `emotion eval`'s scoring and
    the Python predictor, with the default predictor settings, and with a changed
    `predictor.max_image_side`, faces cut aligned by their landmarks and score weights
    together (one case for all, as each case starts its own `emotion tag` and Serve app)."""
    import pyarrow.parquet as pq
    from omegaconf import OmegaConf
    from ray import serve

    from emotion.evaluation import first_person_scores
    from emotion.predictor import build_predictor

    side = list(changed)
    url = service
    if changed:  # a second app with the changed settings
        plain = OmegaConf.to_container(compose_serve(list(served_cfg_overrides(served_cfg)) + side), resolve=True)
        serve.run(build_app(ServeArgs(**{k: plain[k] for k in ("detector", "model", "predictor", "serve")})),
                  name="side", route_prefix="/side")
        url = service + "/side"
    try:
        data = photos["obama.jpg"]
        (tmp_path / "in" / "happy").mkdir(parents=True)
        path = tmp_path / "in" / "happy" / "obama.jpg"
        path.write_bytes(data)

        response = post_file(url, "obama.jpg", data)
        assert response.status_code == 200, response.text
        http = response.json()["people"]

        predictor_cfg = OmegaConf.to_container(compose_serve(["detector.device=cpu", "model.device=cpu", *side]),
                                               resolve=True)
        predictor = build_predictor(predictor_cfg)
        direct = [r for r in predictor.predict_bytes([str(path)], [data]).to_pylist() if r["person_index"] is not None]

        # `emotion tag` as a user runs it, with its own local Ray: this module's Ray has its
        # CPUs reserved by the Serve replicas.
        tag = subprocess.run([str(Path(sys.executable).parent / "emotion"), "tag", f"input={path}",
                              f"output={tmp_path / 'tags'}", "detector.device=cpu", "model.device=cpu",
                              "ray.num_cpus=2", *side], capture_output=True, text=True, timeout=300)
        assert tag.returncode == 0, tag.stdout[-2000:] + tag.stderr[-2000:]
        tagged = pq.read_table(sorted((tmp_path / "tags").glob("*.parquet"))).to_pylist()

        evaluated = first_person_scores(predictor, [str(path)])[0]

        # An aligned crop is cut to whole grey levels from landmarks that move by about 1e-5 px
        # with the detector's torch thread count (a Serve replica runs one thread), so a few
        # pixels round the other way: scores agree to about 4e-5 there, within 1e-5 otherwise.
        score_atol = 1e-4 if "predictor.align_faces=true" in changed else 1e-5
        _compare(http, direct, "HTTP vs predictor", score_atol)
        _compare(tagged, direct, "tag vs predictor", score_atol)
        np.testing.assert_allclose(evaluated, direct[0]["scores"], atol=score_atol, err_msg="eval vs predictor")
        assert tagged[0]["source"] == direct[0]["source"] == str(path) and http[0]["source"] == "obama.jpg"
    finally:
        if changed:
            serve.delete("side")


def served_cfg_overrides(cfg) -> list[str]:
    """The module's serve config as overrides (a fresh port is not needed: same Serve)."""
    from omegaconf import OmegaConf

    plain = OmegaConf.to_container(cfg, resolve=True)
    limits, rec = plain["serve"]["limits"], plain["serve"]["recognizer"]
    return [f"serve.port={plain['serve']['port']}", "serve.recognizer.num_cpus=0.5",
            f"serve.recognizer.torch_threads={rec['torch_threads']}", "serve.ingress.num_cpus=0.1",
            f"serve.limits.max_image_pixels={limits['max_image_pixels']}", "detector.device=cpu", "model.device=cpu"]


# -- service behaviour under load: timing, metrics, overload, drain ----------------------------
def server_timing_of(response: requests.Response) -> dict[str, str]:
    """``Server-Timing`` -> {name: dur or desc}."""
    phases = {}
    for part in response.headers["Server-Timing"].split(","):
        name, _, param = part.strip().partition(";")
        phases[name] = param.split("=", 1)[1].strip('"')
    return phases


def test_each_answer_says_where_its_time_went(service, photos):
    response = post_file(service, "obama.jpg", photos["obama.jpg"])
    assert response.status_code == 200, response.text
    timing = server_timing_of(response)
    assert set(timing) == {"queue", "decode", "detect", "recognise", "handle", "ingress", "total", "batch"}
    durations = {name: float(value) for name, value in timing.items() if name != "batch"}
    assert all(value >= 0 for value in durations.values()), timing
    assert durations["detect"] > 0 and durations["recognise"] > 0
    parts = sum(durations[name] for name in ("queue", "decode", "detect", "recognise", "handle", "ingress"))
    assert abs(parts - durations["total"]) < 1.0, timing  # the phases add up to the total
    files = [("file", (name, data, "image/jpeg")) for name, data in photos.items()]
    batch = requests.post(service + "/v1/recognize:batch", files=files, timeout=60)
    assert batch.status_code == 200 and "recognise;dur=" in batch.headers["Server-Timing"]


def test_a_lone_request_is_not_delayed_by_batching(service, photos):
    """The module's app batches up to 16 with a 50 ms wait: requests one at a time still
    run alone and at once (no wait for a batch that never comes)."""
    data = photos["obama.jpg"]
    for i in range(4):
        response = post_file(service, f"lone{i}.jpg", data)
        timing = server_timing_of(response)
        assert timing["batch"] == "1" and float(timing["queue"]) < 20, timing


def test_metrics_endpoint_is_scraped(service, photos, ray_local):
    """Ray's metrics export port serves ours and Ray Serve's series in Prometheus text."""
    port = ray_local.nodes()[0]["MetricsExportPort"]
    assert post_file(service, "obama.jpg", photos["obama.jpg"]).status_code == 200
    assert requests.post(service + "/v1/recognize", data=b"", headers={"Content-Type": "image/jpeg"},
                         timeout=30).status_code == 400
    wanted = ['ray_emotion_http_requests_total{', 'route="/v1/recognize"', 'status="200"', 'status="400"',
              "ray_emotion_http_request_duration_ms_bucket", "ray_emotion_batch_size_bucket",
              "ray_emotion_batch_queue_length", 'ray_emotion_model_info{', "model_id=\"face_ensemble@sha256:",
              "ray_serve_num_http_requests", "ray_serve_deployment_processing_latency_ms"]
    deadline, text = time.monotonic() + 60, ""
    while time.monotonic() < deadline:  # Ray exports every few seconds
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        if all(w in text for w in wanted):
            break
        time.sleep(2)
    missing = [w for w in wanted if w not in text]
    assert not missing, f"not in the scrape: {missing}"
    ok = [line for line in text.splitlines() if line.startswith("ray_emotion_http_requests_total{")
          and 'route="/v1/recognize"' in line and 'status="200"' in line]
    assert ok and float(ok[0].rsplit(" ", 1)[1]) >= 1
    # An idle replica's gauges stay in the scrape, export cycles after they were first set.
    time.sleep(25)
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    gauges = ["ray_emotion_batch_queue_length", 'ray_emotion_model_info{']
    assert not [w for w in gauges if w not in text], "the gauges dropped out of an idle replica's scrape"


def _light_app(served_cfg, name: str, overrides: dict) -> str:
    """A second app on the module's Serve with the full-frame detector and tiny CPU asks."""
    from omegaconf import OmegaConf
    from ray import serve

    plain = OmegaConf.to_container(served_cfg, resolve=True)
    plain["detector"] = full_frame_detector(find_face=False)
    plain["serve"]["recognizer"].update(num_cpus=0.05, **overrides)
    plain["serve"]["ingress"]["num_cpus"] = 0.05
    serve.run(build_app(ServeArgs(**{k: plain[k] for k in ("detector", "model", "predictor", "serve")})),
              name=name, route_prefix=f"/{name}")
    return plain["serve"]["port"]


def test_overload_gets_503_with_retry_after(service, served_cfg, photos):
    """One request at a time in the recognizer and one waiting: the rest are shed at once."""
    from ray import serve

    _light_app(served_cfg, "tight", {"max_batch_size": 1, "max_ongoing_requests": 1, "max_queued_requests": 1})
    url = service + "/tight"
    try:
        data = photos["obama.jpg"]

        def one(i: int) -> requests.Response:
            return post_file(url, f"o{i}.jpg", data)

        with ThreadPoolExecutor(12) as pool:
            responses = list(pool.map(one, range(36)))
        statuses = sorted({r.status_code for r in responses})
        assert statuses == [200, 503], statuses
        for r in responses:
            if r.status_code == 503:
                assert r.headers["Retry-After"] == "1" and r.json()["error"] == "overloaded", r.text
    finally:
        serve.delete("tight")


def test_drain_finishes_in_flight_requests_and_refuses_new_ones(service, served_cfg, photos):
    """What `emotion serve` does on SIGTERM before Serve stops: requests in flight are
    answered, new ones get 503 with Retry-After, /readyz turns 503."""
    import threading

    from ray import serve

    from jobs.serve import drain

    _light_app(served_cfg, "drainme", {})
    url = service + "/drainme"
    stop = threading.Event()
    outcomes: list[tuple[float, int, str]] = []

    def client(i: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                r = post_file(url, f"d{i}-{n}.jpg", photos["obama.jpg"])
                outcomes.append((time.monotonic(), r.status_code, r.headers.get("Retry-After", "")))
                if r.status_code == 503:
                    return
            except requests.RequestException as exc:
                outcomes.append((time.monotonic(), 0, repr(exc)))
                return

    try:
        threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        time.sleep(2.0)
        drain_start = time.monotonic()
        held = drain("drainme", timeout_s=20)
        drained = time.monotonic()
        ready = requests.get(url + "/readyz", timeout=10)
        late = post_file(url, "late.jpg", photos["obama.jpg"])
        stop.set()
        for t in threads:
            t.join(60)
        assert held == 0
        assert ready.status_code == 503 and ready.headers["Retry-After"] == "1"
        assert late.status_code == 503 and late.json()["error"] == "draining"
        assert all(status in (200, 503) for _, status, _ in outcomes), outcomes
        assert sum(1 for _, status, _ in outcomes if status == 200) > 6  # served until the drain
        assert all(after == "1" for _, status, after in outcomes if status == 503)
        # Every client ended on a 503, none after the drain reported nothing in flight
        # with a request left unanswered.
        assert sum(1 for _, status, _ in outcomes if status == 503) == 6
        assert all(t <= drained + 5 for t, _, _ in outcomes) and drain_start < drained
    finally:
        stop.set()
        serve.delete("drainme")


@pytest.mark.integration
@pytest.mark.slow  # starts its own Ray and models: about a minute on a busy 2-core machine
@pytest.mark.parametrize("throughput_optimized", [False, True])
def test_sigterm_under_load_drains_then_stops(tmp_path, photos, throughput_optimized):
    """`kill -TERM <pid>` to `emotion serve` (what Kubernetes and most process managers send
    to the main process) while clients keep sending: every request sent before the signal
    is answered 200, later ones get 200 or 503 with Retry-After while the service drains,
    the process exits 0, and Serve's shutdown logs no warning."""
    import threading

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.setdefault("RAY_AUTH_MODE", "disabled")
    args = [str(Path(sys.executable).parent / "emotion"), "serve", f"serve.port={port}", "detector=full_frame",
            f"serve.throughput_optimized={str(throughput_optimized).lower()}", "serve.access_log=false"]
    with open(tmp_path / "serve.log", "wb") as log:
        proc = subprocess.Popen(args, cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    records: list[tuple[float, float, int, str]] = []  # (sent, finished, status, Retry-After)
    stop = threading.Event()

    def client(i: int) -> None:
        session = requests.Session()
        while not stop.is_set() and proc.poll() is None:
            sent = time.monotonic()
            try:
                r = session.post(url + "/v1/recognize", data=photos["obama.jpg"],
                                 headers={"Content-Type": "image/jpeg"}, timeout=60)
                records.append((sent, time.monotonic(), r.status_code, r.headers.get("Retry-After", "")))
                if r.status_code == 503:
                    time.sleep(0.05)
            except requests.RequestException:
                records.append((sent, time.monotonic(), 0, ""))
                time.sleep(0.05)

    try:
        deadline = time.monotonic() + 300
        while not _answers(url + "/readyz"):
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the server did not come up within 300 s"
            time.sleep(1)
        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(8)]
        for t in threads:
            t.start()
        time.sleep(3)
        signalled = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(90)
        exited = time.monotonic()
        stop.set()
        for t in threads:
            t.join(60)
        output = (tmp_path / "serve.log").read_text()
        assert proc.returncode == 0, output[-3000:]
        before = [r for r in records if r[0] < signalled]
        assert before and all(status == 200 for _, _, status, _ in before), \
            f"requests sent before SIGTERM that failed: {[r for r in before if r[2] != 200]}"
        after = [r for r in records if r[0] >= signalled]
        refused = [r for r in after if r[2] == 503]
        assert refused and all(r[3] == "1" for r in refused)
        # Draining, a request is answered 200 or 503; once drained, Serve stops and its port
        # closes: only then (the last seconds before the exit) are connections refused.
        failed = [r for r in after if r[2] not in (200, 503)]
        last_ok = max(r[1] for r in after + before if r[2] == 200)
        timeline = [(round(r[0] - signalled, 3), round(r[1] - signalled, 3), r[2]) for r in after]
        assert all(r[2] == 0 and r[0] > last_ok and exited - r[0] < 5 for r in failed), \
            f"failures while draining (sent, answered, status after the signal): {timeline}"
        assert "drained: no request in flight" in output, output[-3000:]
        assert "Controller failed to shut down" not in output and "Traceback" not in output, output[-3000:]
        assert exited - signalled < 30, f"stopping took {exited - signalled:.1f} s"
    finally:
        stop.set()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
