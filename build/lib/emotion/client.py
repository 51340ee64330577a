"""Python client of the HTTP API (``emotion serve``), and the ``emotion client`` command.

    >>> client = EmotionClient("http://127.0.0.1:8000", token=None)
    >>> client.recognize("photo.jpg")["people"][0]["emotions"]
    ['happiness']

    $ emotion client photo.jpg other.png [--url URL] [--token T] [--json]

A client holds one HTTP connection pool: use one client per thread.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence, Union

import requests

DEFAULT_URL = "http://127.0.0.1:8000"
URL_ENV = "EMOTION_URL"
TOKEN_ENV = "EMOTION_API_TOKEN"

ImageInput = Union[str, os.PathLike, bytes]


class EmotionAPIError(RuntimeError):
    """The server refused or failed a request (``status`` None: it could not be reached)."""

    def __init__(self, status: int | None, error: str, detail: str):
        super().__init__(f"{status or 'no response'} {error}: {detail}")
        self.status, self.error, self.detail = status, error, detail


class EmotionClient:
    """Calls ``/v1/recognize``, ``/v1/recognize:batch``, ``/v1/models`` and health endpoints."""

    def __init__(self, base_url: str = DEFAULT_URL, token: str | None = None, timeout: float = 60.0):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._session = requests.Session()
        if token:
            self._session.headers["Authorization"] = f"Bearer {token}"

    # -- API ------------------------------------------------------------------------------
    def recognize(self, image: ImageInput, filename: str | None = None) -> dict:
        """One image (path or bytes) -> ``{"model", "labels", "image", "people"}``."""
        return self._request("POST", "/v1/recognize", files={"file": _file_part(image, filename, "upload")})

    def recognize_batch(self, images: Sequence[ImageInput]) -> list[dict]:
        """Several images in one request -> one response per image, in order."""
        files = [("file", _file_part(image, None, f"upload-{i}")) for i, image in enumerate(images)]
        return self._request("POST", "/v1/recognize:batch", files=files)

    def models(self) -> list[dict]:
        """The served model(s): name, id, checkpoint_hash, labels, multi_label, ..."""
        return self._request("GET", "/v1/models")["models"]

    def stats(self) -> dict:
        return self._request("GET", "/v1/stats")

    def health(self) -> dict:
        """``{"status": "ok"}`` when the server process is up."""
        return self._request("GET", "/healthz")

    def ready(self) -> dict:
        """``{"status": "ready"}`` once the model answers (raises otherwise)."""
        return self._request("GET", "/readyz")

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> "EmotionClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- helpers --------------------------------------------------------------------------
    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._session.request(method, self.base_url + path, timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            raise EmotionAPIError(None, "connection_error", f"{self.base_url}{path}: {exc}") from exc
        if response.status_code >= 400:
            try:
                body = response.json()
                error, detail = str(body.get("error", "http_error")), str(body.get("detail", ""))
            except (ValueError, AttributeError):
                error, detail = "http_error", response.text[:500]
            raise EmotionAPIError(response.status_code, error, detail)
        return response.json()


def _file_part(image: ImageInput, filename: str | None, default: str) -> tuple[str, bytes]:
    if isinstance(image, (bytes, bytearray, memoryview)):
        return filename or default, bytes(image)
    path = Path(image)
    return filename or path.name, path.read_bytes()


# -- command line -------------------------------------------------------------------------
def format_person(source: str, person: dict, labels: Sequence[str], top: int = 3) -> str:
    """One line: source, person index, face box and the top emotions with scores."""
    box = person.get("face_box") or person.get("body_box")
    box_text = "[" + ", ".join(f"{v:.0f}" for v in box) + "]" if box else "[]"
    scores = person.get("scores") or []
    ranked = sorted(zip(labels, scores), key=lambda pair: -(pair[1] or 0.0))[:top]
    top_text = ", ".join(f"{name} {score:.2f}" for name, score in ranked if score is not None)
    return f"{source}\tperson {person['person_index']}\tbox {box_text}\t{top_text}"


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="emotion client", description="Send images to a running `emotion serve`.")
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--url", default=os.environ.get(URL_ENV, DEFAULT_URL), help=f"server (env {URL_ENV})")
    parser.add_argument("--token", default=os.environ.get(TOKEN_ENV), help=f"bearer token (env {TOKEN_ENV})")
    parser.add_argument("--json", action="store_true", help="print each response as one JSON line")
    parser.add_argument("--timeout", type=float, default=60.0)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    failed = 0
    with EmotionClient(args.url, token=args.token, timeout=args.timeout) as client:
        for image in args.images:
            try:
                result = client.recognize(image)
            except (EmotionAPIError, OSError) as exc:
                print(f"{image}\terror\t{exc}", file=sys.stderr)
                failed += 1
                if isinstance(exc, EmotionAPIError) and exc.status in (None, 401):
                    break  # the next images would fail the same way
                continue
            if args.json:
                print(json.dumps({"source": image, **result}))
            elif not result["people"]:
                print(f"{image}\tno person found")
            else:
                for person in result["people"]:
                    print(format_person(image, person, result["labels"]))
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
