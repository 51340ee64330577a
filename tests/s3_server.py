"""A real S3-compatible HTTP server on loopback for tests (moto), and pytest fixtures.

Use from a test module::

    from tests.s3_server import s3_server, s3_endpoint, s3_bucket  # noqa: F401 (fixtures)

    def test_x(s3_bucket):            # env points at the server, bucket exists
        storage.write_bytes(f"s3://{s3_bucket}/a.txt", b"hi")

* ``s3_server`` (session): a ``moto.server.ThreadedMotoServer`` on 127.0.0.1; yields
  its endpoint URL. It runs in the pytest process, so anything that can reach loopback
  (Ray workers included) can use it while the session lasts.
* ``s3_endpoint`` (function): sets dummy ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``
  / region and ``AWS_ENDPOINT_URL_S3`` with monkeypatch, disables the EC2 metadata probe,
  and wipes the server's state afterwards.
* ``s3_bucket`` (function): a fresh bucket on that server; yields its name.

Ray processes only see these variables if they are set before ``ray.init()`` /
``ray start``, or if they are passed explicitly: ``ray.init(runtime_env={"env_vars":
s3_env(endpoint)})`` (see ``s3_env``).

``MotoProcess`` runs a separate ``python -m moto.server`` whose authentication can be
switched on (moto keeps that switch process-wide, so it must not be the shared server),
and ``ThrottlingProxy`` answers the first N requests with a real ``503 SlowDown``.
"""

from __future__ import annotations

import http.client
import http.server
import json
import logging
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from typing import Iterator

import pytest

DUMMY_ACCESS_KEY_ID = "testing-access-key"
DUMMY_SECRET_ACCESS_KEY = "testing-secret-key-do-not-log"
REGION = "us-east-1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def s3_env(endpoint: str) -> dict[str, str]:
    """Environment variables that point boto3, PyArrow and emotion.storage at ``endpoint``.

    Pass them to Ray with ``runtime_env={"env_vars": s3_env(endpoint)}`` or export them
    before ``ray start``.
    """
    return {
        "AWS_ACCESS_KEY_ID": DUMMY_ACCESS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": DUMMY_SECRET_ACCESS_KEY,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        "AWS_ENDPOINT_URL_S3": endpoint,
        # Never probe 169.254.169.254 for an instance role: tests stay on loopback.
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def _post(url: str, body: bytes = b"") -> bytes:
    # moto's control API reads the raw body, so it must not look like a form.
    req = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "text/plain"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.read()


def reset_server(endpoint: str) -> None:
    """Delete every bucket and object (and IAM user) the server holds."""
    _post(f"{endpoint}/moto-api/reset")


def boto3_client(endpoint: str, service: str = "s3", **creds):
    """A plain boto3 client for setting up server state in tests."""
    import boto3

    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=creds.get("key_id", DUMMY_ACCESS_KEY_ID),
        aws_secret_access_key=creds.get("secret", DUMMY_SECRET_ACCESS_KEY),
    )


def seed_objects(bucket: str, keys: list[str], body: bytes = b"x") -> None:
    """Put many small objects straight into the in-process server's store.

    Thousands of PUTs over HTTP cost ~5 ms each here (client and server share one
    interpreter), so tests that only need the objects to *exist* seed them this way;
    everything they then do (listing, reading) still goes over HTTP.
    """
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    for key in keys:
        backend.put_object(bucket, key, body)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A ThreadedMotoServer on 127.0.0.1; yields ``http://127.0.0.1:PORT``."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_endpoint(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The server's endpoint, with this process's AWS environment pointing at it."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
    for name, value in s3_env(s3_server).items():
        monkeypatch.setenv(name, value)
    yield s3_server
    reset_server(s3_server)


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    """A new, empty bucket on the test server; its name."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3_client(s3_endpoint).create_bucket(Bucket=name)
    return name


class MotoProcess:
    """``python -m moto.server`` in its own process, on 127.0.0.1.

    Its state (buckets, IAM users, the authentication switch) is its own, so a test can
    turn authentication on without affecting the shared ``s3_server``.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> "MotoProcess":
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{self.endpoint}/moto-api/data.json", timeout=1).close()
                return self
            except OSError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    self.__exit__()
                    raise RuntimeError(f"moto server did not start on {self.endpoint}")
                time.sleep(0.05)

    def __exit__(self, *exc) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None

    def create_user_with_s3_access(self, name: str = "tester") -> tuple[str, str]:
        """An IAM user allowed ``s3:*``; returns (access key id, secret access key).

        Call before ``enable_auth``: these setup requests are not authenticated.
        """
        iam = boto3_client(self.endpoint, "iam")
        iam.create_user(UserName=name)
        key = iam.create_access_key(UserName=name)["AccessKey"]
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
        }
        iam.put_user_policy(UserName=name, PolicyName="s3-all", PolicyDocument=json.dumps(policy))
        return key["AccessKeyId"], key["SecretAccessKey"]

    def enable_auth(self) -> None:
        """From the next request on, check every request's signature and IAM policy."""
        _post(f"{self.endpoint}/moto-api/reset-auth", b"0")


class ThrottlingProxy:
    """An HTTP proxy on 127.0.0.1 that answers the first ``failures`` requests with
    ``503 SlowDown`` (as S3 does when throttling) and forwards the rest upstream."""

    SLOW_DOWN = (
        b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
        b"<Message>Please reduce your request rate.</Message></Error>"
    )

    def __init__(self, upstream: str, failures: int) -> None:
        self.upstream = upstream.removeprefix("http://")
        self.failures = failures
        self.requests_seen = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                with proxy._lock:
                    proxy.requests_seen += 1
                    throttle = proxy.requests_seen <= proxy.failures
                if throttle:
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(proxy.SLOW_DOWN)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(proxy.SLOW_DOWN)
                    return
                conn = http.client.HTTPConnection(proxy.upstream, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for key, value in resp.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                # A HEAD answer has no body but announces the object's length.
                length = resp.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> "ThrottlingProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
