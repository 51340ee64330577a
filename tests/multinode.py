"""A real multi-node Ray cluster on this machine for tests (wraps cluster/local_cluster.sh).

Use from a test module::

    from tests.multinode import two_node_ray, run_driver  # noqa: F401 (fixture)
    from tests.s3_server import s3_server  # noqa: F401 (the cluster's S3 endpoint)

    def test_x(two_node_ray):
        out = run_driver(two_node_ray, "import ray; ray.init(); print(len(ray.nodes()))")

``two_node_ray`` (session) is a head (resource ``node_0``) plus one worker node
(``node_1``), 1 CPU each, token authentication on, joined over loopback. Its nodes were
started with the S3 test server's environment (``tests.s3_server.s3_env``), so Ray
workers on every node reach ``s3://`` on that server.

Drivers: ``run_driver`` runs Python in a fresh process pointed at the cluster (nothing
in the pytest process changes). ``connected(cluster)`` makes the pytest process itself
the driver; it shuts down any Ray already running in-process (e.g. the ``ray_local``
fixture's), so use it only in tests that need no local Ray afterwards.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "cluster" / "local_cluster.sh"


@dataclass(frozen=True)
class LocalRayCluster:
    """A running local multi-node cluster."""

    address: str  # GCS address, for ray.init(address=...)
    num_nodes: int
    state_dir: Path  # pids, logs and each node's Ray temp dir
    env: Mapping[str, str] = field(default_factory=dict)  # what a driver process needs


def _script_env(state_dir: Path, extra_env: Mapping[str, str] | None, head_cpus: int, worker_cpus: int) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env.update(extra_env or {})
    env.update(
        EMOTION_RAY_CLUSTER_DIR=str(state_dir),
        EMOTION_RAY_HEAD_CPUS=str(head_cpus),
        EMOTION_RAY_WORKER_CPUS=str(worker_cpus),
        RAY_BIN=str(Path(sys.executable).with_name("ray")),
    )
    return env


def start_local_cluster(
    workers: int = 1,
    *,
    extra_env: Mapping[str, str] | None = None,
    head_cpus: int = 1,
    worker_cpus: int = 1,
    timeout_s: float = 180,
) -> LocalRayCluster:
    """Start a head plus ``workers`` worker nodes; ``extra_env`` reaches every Ray worker."""
    # Short path: Ray puts Unix sockets under the temp dir (108-byte limit).
    state_dir = Path(tempfile.mkdtemp(prefix="emray-", dir="/tmp"))
    env = _script_env(state_dir, extra_env, head_cpus, worker_cpus)
    proc = subprocess.run(
        ["bash", str(SCRIPT), "start", str(workers)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    if proc.returncode != 0:
        subprocess.run(["bash", str(SCRIPT), "stop"], env=env, capture_output=True, timeout=120)
        raise RuntimeError(f"local Ray cluster failed to start:\n{proc.stdout}\n{proc.stderr}")
    address = (state_dir / "address").read_text().strip()
    driver_env = dict(extra_env or {}, RAY_AUTH_MODE="token")
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        driver_env["RAY_AUTH_TOKEN_PATH"] = os.environ["RAY_AUTH_TOKEN_PATH"]
    return LocalRayCluster(address, workers + 1, state_dir, driver_env)


def stop_local_cluster(cluster: LocalRayCluster) -> None:
    env = _script_env(cluster.state_dir, None, 1, 1)
    subprocess.run(["bash", str(SCRIPT), "stop"], env=env, capture_output=True, timeout=180)
    for _ in range(10):  # processes that just exited may still be flushing logs into it
        shutil.rmtree(cluster.state_dir, ignore_errors=True)
        if not cluster.state_dir.exists():
            break
        time.sleep(0.5)


@contextlib.contextmanager
def local_ray_cluster(workers: int = 1, **kwargs) -> Iterator[LocalRayCluster]:
    cluster = start_local_cluster(workers, **kwargs)
    try:
        yield cluster
    finally:
        stop_local_cluster(cluster)


def run_driver(cluster: LocalRayCluster, code: str, timeout_s: float = 180) -> str:
    """Run ``code`` as a Ray driver in a new Python process; returns its stdout.

    ``ray.init()`` inside ``code`` connects to the cluster (RAY_ADDRESS is set).
    """
    env = dict(os.environ)
    env.update(cluster.env)
    env["RAY_ADDRESS"] = cluster.address
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout_s
    )
    if proc.returncode != 0:
        raise AssertionError(f"driver failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


@contextlib.contextmanager
def connected(cluster: LocalRayCluster, **init_kwargs) -> Iterator[None]:
    """Make this process a driver of ``cluster`` (shuts down any in-process Ray first)."""
    import ray

    ray.shutdown()
    saved = {k: os.environ.get(k) for k in cluster.env}
    os.environ.update(cluster.env)
    # Explicit addresses never turn token auth on by themselves; refresh Ray's cached
    # config so this process sees RAY_AUTH_MODE=token.
    ray._raylet.Config.initialize("")
    try:
        ray.init(address=cluster.address, log_to_driver=False, **init_kwargs)
        yield
    finally:
        ray.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def two_node_ray(s3_server: str) -> Iterator[LocalRayCluster]:
    """Head + one worker node (1 CPU each), token auth on, S3 test env on every node."""
    from tests.s3_server import s3_env

    # One detect_slot per node: a pool asking for one per actor gets one actor per node.
    with local_ray_cluster(1, extra_env=dict(s3_env(s3_server), EMOTION_RAY_NODE_RESOURCES='{"detect_slot": 1}')) as cluster:
        yield cluster
