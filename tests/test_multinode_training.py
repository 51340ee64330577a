"""Ray Train across two real Ray nodes on this machine, and recovery from a killed worker.

The cluster (``tests.multinode.two_node_ray``: head + one worker node, token auth on)
runs two training workers placed with STRICT_SPREAD, so each node holds one. The driver
is a separate process; this test watches ``metrics.json`` (rank 0 rewrites it after
every epoch, with the node id and pid of every rank) and, once two epochs have
finished, kills rank 1's process with SIGKILL. Ray Train must restart the worker group from the
latest checkpoint (``FailureConfig``) and finish every epoch exactly once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.multinode import two_node_ray  # noqa: F401 (fixture)
from tests.s3_server import s3_server  # noqa: F401 (the cluster fixture needs it)
from tests.test_training import CONFIG_DIR, PROJECT_ROOT, write_band_folder

pytestmark = [pytest.mark.integration, pytest.mark.cluster]

EPOCHS = 6

DRIVER = """
import json, sys
from hydra import compose, initialize_config_dir
from jobs.train import run
with initialize_config_dir(config_dir={config_dir!r}, version_base="1.3"):
    cfg = compose(config_name="train", overrides={overrides!r})
summary = run(cfg)
print("HISTORY " + json.dumps(summary.history))
"""


def start_driver(cluster, overrides: list[str], log: Path) -> subprocess.Popen:
    env = dict(os.environ)
    env.update(cluster.env)
    env["RAY_ADDRESS"] = cluster.address
    code = DRIVER.format(config_dir=CONFIG_DIR, overrides=overrides)
    return subprocess.Popen([sys.executable, "-c", code], cwd=PROJECT_ROOT, env=env,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)


def wait_for_epoch(metrics: Path, driver: subprocess.Popen, epoch: int, timeout_s: float) -> dict:
    """The metrics row of ``epoch`` once rank 0 has written it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if driver.poll() is not None:
            raise AssertionError("the training driver ended before the worker could be killed")
        try:
            epochs = json.loads(metrics.read_text())["epochs"]
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            epochs = []
        for row in epochs:
            if row["epoch"] == epoch:
                return row
        time.sleep(0.05)
    raise AssertionError(f"epoch {epoch} did not finish within {timeout_s} s")


def test_two_workers_on_two_nodes_survive_a_killed_worker(two_node_ray, tmp_path):
    data = write_band_folder(tmp_path / "data", {"train": 32, "val": 8})
    output = tmp_path / "out"
    overrides = [
        f"ray.address={two_node_ray.address}",
        "scaling.num_workers=2", "scaling.cpus_per_worker=0.5", "scaling.placement_strategy=STRICT_SPREAD",
        "max_failures=1",
        "data=image_folder", f"data.root={data}",
        "model.backbone=toy", "model.pretrained=false", "model.input_size=64",
        f"train.epochs={EPOCHS}", "train.batch_size=8", "train.torch_threads=1", "train.log_every=0",
        f"output={output}",
    ]
    log = tmp_path / "driver.log"
    driver = start_driver(two_node_ray, overrides, log)
    try:
        # Rank 0 lists an epoch after its checkpoint was reported; waiting for the second
        # epoch makes sure Ray Train has registered the first one's checkpoint.
        row = wait_for_epoch(output / "metrics.json", driver, 1, timeout_s=240)
        assert row["world_size"] == 2
        assert len(set(row["node_ids"])) == 2, f"both workers landed on one node: {row['node_ids']}"
        killed = row["pids"][1]
        os.kill(killed, signal.SIGKILL)
        driver.wait(timeout=300)
    finally:
        if driver.poll() is None:
            driver.kill()
    text = log.read_text()
    assert driver.returncode == 0, text[-4000:]
    history = json.loads(next(line for line in text.splitlines() if line.startswith("HISTORY "))[len("HISTORY "):])
    assert [row["epoch"] for row in history] == list(range(EPOCHS))  # every epoch once, the last one reached
    resumed = [row for row in history if row["start_epoch"] > 0]
    assert resumed, "no epoch ran in a restarted attempt: the kill was not recovered from a checkpoint"
    # The restarted attempt began right after a saved epoch, on two nodes again, without the killed process.
    assert resumed[0]["epoch"] == resumed[0]["start_epoch"] >= 1
    assert all(killed not in row["pids"] for row in resumed)
    assert all(len(set(row["node_ids"])) == 2 for row in history)
    assert (output / "best.ckpt").is_file()
