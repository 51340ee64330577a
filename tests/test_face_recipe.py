"""``make train-face`` (``jobs/train_face_ensemble.sh``): the default face model's recipe as one
resumable command, run end to end on a few rows of the real datasets."""

from __future__ import annotations

import csv
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

DATASETS = ("ferplus", "fer2013", "expw", "sfew")
SCRIPT = PROJECT_ROOT / "jobs" / "train_face_ensemble.sh"


@pytest.fixture(scope="module")
def face_data() -> Path:
    root = Path(os.environ.get("EMOTION_FACE_DATA", PROJECT_ROOT.parent / "shared" / "data"))
    missing = [name for name in DATASETS if not (root / name).is_dir()]
    if missing:
        pytest.skip(f"face datasets not found under {root}: {', '.join(missing)} (set EMOTION_FACE_DATA)")
    return root


def run_recipe(data: Path, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "DATA": str(data), "OUT": str(out), "OVERRIDES": "limit=64 train.epochs=1"}
    return subprocess.run([str(SCRIPT)], env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_the_recipe_trains_the_members_side_by_side_and_a_rerun_skips_them(face_data, tmp_path):
    from emotion.checkpoint import load_checkpoint

    out = tmp_path / "recipe"
    first = run_recipe(face_data, out)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    ensemble = load_checkpoint(out / "qcs_ensemble.ckpt")
    members = [load_checkpoint(out / name / "export_fp16.ckpt") for name in ("member1", "member2")]
    assert ensemble["model_name"] == "face_ensemble" and ensemble["labels"] == members[0]["labels"]
    assert [m["sha256"] for m in ensemble["extra"]["members"]] == [m["sha256"] for m in members]
    assert all(m["model_cfg"]["test_flip"] and m["extra"]["stored_dtype"] == "float16" for m in members)
    assert members[0]["model_cfg"]["class_prior"] is None and members[1]["model_cfg"]["class_prior"]
    # member2 starts from face_v2's weights, and member1 trained beside those two runs.
    assert load_checkpoint(out / "member2" / "best.ckpt")["model_name"] == "qcs"
    with open(out / "recipe_times.tsv", newline="") as handle:
        rows = {row["what"]: row for row in csv.DictReader(handle, delimiter="\t")}
    assert set(rows) == {"invocation_start", "member1", "face_v2", "member2", "invocation"}
    assert all(row["status"] == "0" for name, row in rows.items() if name != "invocation_start")
    assert int(rows["member1"]["started"]) < int(rows["face_v2"]["ended"])
    assert int(rows["face_v2"]["started"]) < int(rows["member1"]["ended"])

    again = run_recipe(face_data, out)
    assert again.returncode == 0 and again.stdout.count("finished, skipped") == 3
    assert load_checkpoint(out / "qcs_ensemble.ckpt")["extra"]["members"] == ensemble["extra"]["members"]
