"""Tagging across a real two-node Ray on this machine, reading from and writing to S3."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from emotion import storage
from tests.multinode import two_node_ray  # noqa: F401 (fixture)
from tests.s3_server import s3_env, s3_server  # noqa: F401 (fixture)

pytestmark = [pytest.mark.integration, pytest.mark.cluster]

# Placement is made deterministic, not left to SPREAD (best effort): every node of the
# test cluster offers one `detect_slot` and each detect actor asks for one, so the pool's
# two actors sit on the two nodes; `wait_for_min_actors_s` holds batches back until both
# have loaded the model, and one batch in flight per actor makes them alternate.


def test_tagging_on_two_nodes_uses_both_and_is_complete(two_node_ray, s3_server, sample_photos, tmp_path,  # noqa: F811
                                                        monkeypatch):
    for key, value in s3_env(s3_server).items():
        monkeypatch.setenv(key, value)
    import boto3

    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket="multi")
    sources = []
    for copy in range(8):
        for name, path in sample_photos.items():
            uri = f"s3://multi/in/{copy}/{name}.jpg"
            storage.write_bytes(uri, path.read_bytes())
            sources.append(uri)
    storage.write_bytes("s3://multi/in/broken.jpg", b"not a jpeg")
    sources.append("s3://multi/in/broken.jpg")

    env = dict(os.environ, **two_node_ray.env, RAY_ADDRESS=two_node_ray.address)
    summary_path = tmp_path / "summary.json"
    cmd = [sys.executable, "-m", "emotion.cli", "tag", "input=s3://multi/in/", "output=s3://multi/out/",
           "ray=cluster", "stages=cluster", f"ray.address={two_node_ray.address}", f"summary_json={summary_path}",
           # two detect actors spread over the two nodes, small batches so work interleaves
           "stages.decode.num_cpus=0.1", "stages.decode.batch_size=2",
           "stages.detect.pool_min=2", "stages.detect.pool_max=2", "stages.detect.num_cpus=0.3",
           "stages.detect.resources={detect_slot: 1}", "stages.wait_for_min_actors_s=120",
           "stages.detect.batch_size=1", "stages.detect.torch_threads=1",
           "stages.detect.max_tasks_in_flight=1",
           "stages.recognize.pool_min=1", "stages.recognize.pool_max=1",
           "stages.recognize.num_cpus=0.2", "stages.recognize.torch_threads=1"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    summary = json.loads(summary_path.read_text())
    assert len(summary["images_by_node"]) == 2, (summary, proc.stdout[-2000:])  # both nodes detected
    assert all(v > 0 for v in summary["images_by_node"].values())
    assert sum(summary["images_by_node"].values()) == len(sources)

    fs, _ = storage.get_filesystem("s3://multi/out/")
    files = storage.list_files("s3://multi/out/", suffixes=(".parquet",))
    table = pq.read_table([storage.split_s3(f)[0] + "/" + storage.split_s3(f)[1] for f in files], filesystem=fs)
    rows = table.to_pylist()
    assert sorted({r["source"] for r in rows}) == sorted(sources)  # complete
    pairs = [(r["source"], r["person_index"]) for r in rows]
    assert len(pairs) == len(set(pairs))  # duplicate-free
    (broken,) = [r for r in rows if r["source"].endswith("broken.jpg")]
    assert broken["error"] and "not an image" in broken["error"]
    assert sum(1 for r in rows if r["person_index"] == 0) == 24
