"""One bad file or one crash never costs a tagging run its work (real Ray, real models).

* hostile inputs: a JPEG with a poisoned EXIF block, a file name that is not UTF-8, a
  file above the size cap, a truncated file; then ``retry_errors=true`` once it is fixed;
* the driver's whole process group killed with SIGKILL at two points, then a re-run:
  every input exactly once, and the re-runs tag only what was not committed;
* a second concurrent run into the same output is refused;
* config mistakes exit 2 with one line naming the key, before Ray starts;
* detect and recognize workers killed mid-run: nothing lost, nothing duplicated.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from emotion.preflight import check_model_checkpoint
from emotion.models.settings import CocoERSettings, yaml_settings
from emotion.settings import ConfigError
from emotion.tagging.output import list_units
from tests.conftest import PROJECT_ROOT
from tests.s3_server import s3_bucket, s3_endpoint, s3_server  # noqa: F401 (fixtures)
from tests.test_tagging import compose_tag

EMOTION = str(Path(sys.executable).parent / "emotion")


def read_rows(output: Path) -> list[dict]:
    units = list_units(str(output))
    return pa.concat_tables([pq.read_table(u) for u in units]).to_pylist() if units else []


def assert_each_input_once(rows: list[dict], inputs: set[str]) -> None:
    """Every input has rows, nothing else does, and no (image, person) pair repeats."""
    keys = [(r["source"], r["person_index"]) for r in rows]
    assert len(keys) == len(set(keys)), "duplicated rows"
    assert {r["source"] for r in rows} == inputs


@pytest.fixture(scope="module")
def hostile_folder(tmp_path_factory, sample_photos, poison_exif_jpeg) -> Path:
    root = tmp_path_factory.mktemp("hostile")
    shutil.copy(sample_photos["obama"], root / "obama.jpg")
    # A name that is not UTF-8 (Latin-1 "é" and a 0xff byte), as old disks and archives have.
    with open(os.path.join(os.fsencode(root), b"caf\xe9-\xff.jpg"), "wb") as f:
        f.write(sample_photos["trump"].read_bytes())
    (root / "poison_exif.jpg").write_bytes(poison_exif_jpeg)
    (root / "big.jpg").write_bytes(os.urandom(300_000))  # above the 200 kB cap set below
    whole = sample_photos["batman"].read_bytes()
    (root / "truncated.jpg").write_bytes(whole[: len(whole) // 3])
    return root


def test_hostile_inputs_each_get_a_row_then_retry_errors(ray_local, hostile_folder, tmp_path, sample_photos):
    from jobs.tag import run

    root, output = hostile_folder, tmp_path / "tags"
    overrides = [f"input={root}", f"output={output}", "max_file_bytes=200000", "commit_every_rows=2"]
    summary = run(compose_tag(overrides))
    rows = read_rows(output)
    by_name = {}
    for r in rows:
        by_name.setdefault(r["source"].rsplit("/", 1)[-1], []).append(r)
    assert sorted(by_name) == sorted(["obama.jpg", "caf\\xe9-\\xff.jpg", "poison_exif.jpg", "big.jpg",
                                      "truncated.jpg"])
    assert summary.images == 5 and summary.errors == 2 and len(summary.files) >= 1
    (odd,) = by_name["caf\\xe9-\\xff.jpg"]  # tagged like any file, its exact bytes kept
    assert odd["error"] is None and odd["person_index"] == 0
    assert odd["source_bytes"] == os.path.join(os.fsencode(root), b"caf\xe9-\xff.jpg")
    assert all(r["error"] is None for r in by_name["poison_exif.jpg"])  # damaged EXIF: pixels still tagged
    (big,) = by_name["big.jpg"]
    assert "file too large" in big["error"] and "200000" in big["error"]
    (cut,) = by_name["truncated.jpg"]
    assert "truncated" in cut["error"]
    assert by_name["obama.jpg"][0]["source_bytes"] is None

    # Resume sees the odd name as done; error rows are final unless retried.
    again = run(compose_tag(overrides))
    assert again.images == 0 and again.skipped_already_tagged == 5

    # The file is repaired (say the S3 read blipped): retry_errors tags only the failed ones.
    (root / "truncated.jpg").write_bytes(sample_photos["batman"].read_bytes())
    retried = run(compose_tag(overrides + ["retry_errors=true"]))
    assert retried.retried_errors == 2 and retried.images == 2 and retried.skipped_already_tagged == 3
    rows = read_rows(output)
    assert_each_input_once(rows, {r["source"] for r in rows})
    fixed = [r for r in rows if r["source"].endswith("truncated.jpg")]
    assert len(fixed) >= 1 and all(r["error"] is None for r in fixed)
    assert [r["error"] for r in rows if r["source"].endswith("big.jpg")][0].startswith("file too large")


# -- the driver killed mid-run -----------------------------------------------------------
@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory, sample_photos) -> Path:
    """120 real photos (the three shipped ones, shrunk and re-encoded at many qualities)."""
    root = tmp_path_factory.mktemp("photos")
    originals = [Image.open(p).convert("RGB") for p in sample_photos.values()]
    for i in range(120):
        img = originals[i % 3].copy()
        img.thumbnail((320, 320))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=60 + i % 40)
        (root / f"img_{i:03d}.jpg").write_bytes(buf.getvalue())
    return root


def start_tag(folder: Path, output: Path, log: Path, *extra: str) -> subprocess.Popen:
    # Small recognize batches make small units: a unit is at least one batch of rows.
    cmd = [EMOTION, "tag", f"input={folder}", f"output={output}", "commit_every_rows=10",
           "stages.recognize.batch_size=8", "stages.predict.batch_size=8", "ray.num_cpus=2", "progress_every_s=0",
           *extra]
    return subprocess.Popen(cmd, cwd=PROJECT_ROOT, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def committed_images(output: Path) -> set[str]:
    return {r["source"] for r in read_rows(output)}


def kill_after_units(proc: subprocess.Popen, output: Path, more_than: int, timeout_s: float = 240) -> int:
    """SIGKILL the driver's process group once more than ``more_than`` units exist."""
    deadline = time.monotonic() + timeout_s
    while len(list_units(str(output))) <= more_than:
        assert proc.poll() is None, "the job ended before it could be killed"
        assert time.monotonic() < deadline, "no unit was committed in time"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    _reap_group(proc.pid)
    return len(list_units(str(output)))


def _reap_group(pgid: int) -> None:
    """Kill what the group's dying processes forked in the instant of the first SIGKILL."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            return
        time.sleep(0.2)


def listed_line(log: Path) -> tuple[int, int]:
    m = re.search(r"(\d+) images listed, (\d+) already tagged", log.read_text())
    assert m, log.read_text()[-2000:]
    return int(m.group(1)), int(m.group(2))


@pytest.mark.integration
def test_driver_killed_twice_then_resumed_loses_and_repeats_nothing(photo_folder, tmp_path):
    output = tmp_path / "tags"
    inputs = {str(p) for p in photo_folder.glob("*.jpg")}
    first = start_tag(photo_folder, output, tmp_path / "run1.log")
    units_1 = kill_after_units(first, output, more_than=1)
    committed_1 = committed_images(output)

    second = start_tag(photo_folder, output, tmp_path / "run2.log")
    # A second writer while `second` runs is refused, before it starts Ray.
    deadline = time.monotonic() + 60
    while "already tagged" not in (tmp_path / "run2.log").read_text():
        assert time.monotonic() < deadline and second.poll() is None, (tmp_path / "run2.log").read_text()
        time.sleep(0.05)
    refused = subprocess.run([EMOTION, "tag", f"input={photo_folder}", f"output={output}"], cwd=PROJECT_ROOT,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2
    assert refused.stdout.strip().count("\n") == 0 and "being written by another run" in refused.stdout
    units_2 = kill_after_units(second, output, more_than=units_1 + 1)
    committed_2 = committed_images(output)

    third = start_tag(photo_folder, output, tmp_path / "run3.log", f"summary_json={tmp_path / 's.json'}")
    assert third.wait(timeout=300) == 0, (tmp_path / "run3.log").read_text()[-3000:]
    summary = json.loads((tmp_path / "s.json").read_text())

    # The re-runs skipped exactly what was committed when the previous run died.
    assert listed_line(tmp_path / "run2.log") == (120, len(committed_1))
    assert listed_line(tmp_path / "run3.log") == (120, len(committed_2))
    assert summary["skipped_already_tagged"] == len(committed_2) and summary["images"] == 120 - len(committed_2)
    rows = read_rows(output)
    assert_each_input_once(rows, inputs)
    assert len(committed_1) >= 10 and len(committed_2) > len(committed_1) and units_2 > units_1
    print(f"\nkill-and-resume: 120 inputs; run 1 killed with {len(committed_1)} committed; run 2 skipped "
          f"{len(committed_1)}, killed with {len(committed_2)} committed; run 3 tagged {summary['images']}; "
          f"final rows {len(rows)}, duplicates 0")


# -- config mistakes ------------------------------------------------------------------------
BAD_CONFIGS = {
    "detector.score_threshold=abc": "detector.score_threshold",
    "detector.score_threshold=2": "detector.score_threshold",
    "stages.detect.pool_max=0": "stages.detect.pool_max",
    "stages.decode.batch_size=0": "stages.decode.batch_size",
    "stages.decode.max_tasks=0": "stages.decode.max_tasks",
    "stages.decode.in_actors=maybe": "stages.decode.in_actors",
    "stages.recognize.batch_size=0": "stages.recognize.batch_size",
    "commit_every_rows=-5": "commit_every_rows",
    "read_timeout_s=0": "read_timeout_s",
    "stages.list.read_tasks=0": "stages.list.read_tasks",
    "output=OUTPUT_IS_A_FILE": "output",
    "detector.scor_threshold=0.5": "detector.scor_threshold",  # a typo: unknown key
    "+detector.scor_threshold=0.5": "detector.scor_threshold",  # forced past Hydra: still unknown
    "+stages.predict.pool_maxx=2": "stages.predict.pool_maxx",
    "detector=nosuch": "detector/nosuch",
    "model.checkpoint=/no/such/best.ckpt": "model.checkpoint",  # read only while Ray starts: checked first
    "model=cocoer": "model.checkpoint",  # a required checkpoint left unset
}


def job_mistake(command: str, overrides: list[str], monkeypatch) -> str:
    """What ``emotion <command> <overrides>`` reports for a config mistake, found in this
    process as the command finds it: the override check (``jobs.overrides``), then the job
    up to where it would start Ray (which must not be reached). The error is one the job
    turns into its single line and exit status 2 (``jobs.user_errors``)."""
    import importlib

    from jobs.overrides import override_error
    from tests.configs import compose_config

    line = override_error(command, overrides)
    if line is not None:
        return line
    job = importlib.import_module(f"jobs.{command}")
    # What each command's entry point turns into one line and exit status 2.
    errors = {"tag": lambda: job.TAG_USER_ERRORS, "train": lambda: (*job.USER_ERRORS, job.storage.StorageError)}.get(
        command, lambda: (FileNotFoundError, KeyError, ValueError))()

    def ray_would_start(*args, **kwargs):
        raise AssertionError("the mistake was not found before Ray starts")

    # The train job imports its pipeline only once the settings are checked.
    starts = {"tag": "jobs.tag.tag_images", "train": "emotion.pipelines.training.run_training",
              "eval": "jobs.eval.build_predictor", "serve": "jobs.serve.serve_app"}
    monkeypatch.setattr(starts[command], ray_would_start)
    with pytest.raises(errors) as err:
        job.run(compose_config(command, overrides))
    message = str(err.value)
    assert "\n" not in message, message
    return message


@pytest.mark.parametrize("override", list(BAD_CONFIGS))
def test_config_mistakes_name_the_key_in_one_line_before_ray_starts(override, tmp_path, monkeypatch):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    message = job_mistake("tag", ["input=samples", override.replace("OUTPUT_IS_A_FILE", str(a_file))], monkeypatch)
    assert BAD_CONFIGS[override] in message, message


@pytest.mark.integration
def test_config_mistake_on_the_command_line_exits_2_with_one_line(tmp_path):
    """The command's wiring: a storage mistake found before Ray starts (no credentials,
    no such bucket) is one line on the console and exit status 2."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["AWS_EC2_METADATA_DISABLED"] = "true"  # no credentials anywhere: fail at once
    result = subprocess.run([EMOTION, "tag", "input=samples", "output=s3://no-such-bucket/tags"],
                            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120, env=env)
    text = (result.stdout + result.stderr).strip()
    assert result.returncode == 2, text
    assert len(text.splitlines()) == 1 and "Traceback" not in text, text
    assert "s3://no-such-bucket/tags" in text
    assert "Started a local Ray" not in text


def test_model_checkpoint_is_found_before_ray_starts(s3_bucket, tmp_path):
    """The job reads the checkpoint while Ray starts; whether it exists is checked first,
    locally and on S3, and a shipped checkpoint's name passes as it is."""
    from emotion import storage

    def model(checkpoint):
        return CocoERSettings(**{**yaml_settings("cocoer"), "device": "cpu", "checkpoint": checkpoint})

    local = tmp_path / "best.ckpt"
    local.write_bytes(b"read later, by the job")
    remote = f"s3://{s3_bucket}/runs/best.ckpt"
    storage.write_bytes(remote, b"read later, by the job")
    for present in (str(local), remote, "qcs_ferplus", None):
        check_model_checkpoint(model(present))
    for missing in (str(tmp_path / "nope.ckpt"), str(tmp_path), f"s3://{s3_bucket}/runs/nope.ckpt"):
        with pytest.raises(ConfigError, match=r"model\.checkpoint=.*no such file"):
            check_model_checkpoint(model(missing))
    with pytest.raises(storage.StorageError, match=r"model\.checkpoint='s3://no-such-bucket/x.ckpt'"):
        check_model_checkpoint(model("s3://no-such-bucket/x.ckpt"))


# -- workers killed mid-run ------------------------------------------------------------------
def _kill_one(title: str) -> int | None:
    """SIGKILL one process whose title names ``title`` (Ray titles actors by class)."""
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        pid, _, args = line.strip().partition(" ")
        if title in args and args.startswith("ray::"):
            os.kill(int(pid), signal.SIGKILL)
            return int(pid)
    return None


@pytest.mark.parametrize("fuse, titles, listed_by_tasks", [
    pytest.param(True, ("PredictStage", "PredictStage"), False, id="fused"),  # the local default
    pytest.param(False, ("DetectStage", "RecognizeStage"), False, id="two-pools", marks=pytest.mark.slow),
    # A large input's listing tasks list the input again on each restart.
    pytest.param(True, ("PredictStage", "PredictStage"), True, id="listed-by-tasks", marks=pytest.mark.slow),
])
def test_killed_detect_and_recognize_workers_lose_nothing(ray_local, photo_folder, tmp_path, fuse, titles,
                                                          listed_by_tasks):
    from jobs.tag import run

    output = tmp_path / "tags"
    killed: list[int] = []

    def killer() -> None:
        for title in titles:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                if len(list_units(str(output))) >= 1 + len(killed):
                    pid = _kill_one(title)
                    if pid:
                        killed.append(pid)
                        break
                time.sleep(0.05)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    summary = run(compose_tag([f"input={photo_folder}", f"output={output}", "commit_every_rows=10",
                               f"stages.fuse={str(fuse).lower()}", f"inline_inputs={0 if listed_by_tasks else 10000}"]))
    thread.join(timeout=5)
    assert len(killed) == 2, "both workers should have been killed mid-run"
    rows = read_rows(output)
    assert_each_input_once(rows, {str(p) for p in photo_folder.glob("*.jpg")})
    assert summary.images == 120 and summary.errors == 0
    assert summary.listed == 120 and summary.skipped_already_tagged == 0  # its own units are not "already tagged"


@pytest.mark.parametrize("command, override, key", [
    ("eval", "batch_size=0", "batch_size"),
    ("eval", "predictor.max_image_side=-1", "predictor.max_image_side"),
    ("train", "train.lr=abc", "train.lr"),
    ("train", "scaling.num_workers=0", "scaling.num_workers"),
    ("train", "+train.bogus_key=1", "train.bogus_key"),
    ("train", "+train.augment.hue=0.1", "train.augment.hue"),
    ("serve", "serve.port=abc", "serve.port"),
    ("serve", "serve.auth_token=1.5", "serve.auth_token"),
    ("serve", "predictor.threshold=5", "predictor.threshold"),
    ("serve", "+serve.recognizer.max_batch=4", "serve.recognizer.max_batch"),
])
def test_every_job_reports_a_config_mistake_in_one_line(command, override, key, monkeypatch):
    message = job_mistake(command, [override] if command == "serve" else ["data.root=/nowhere", override],
                          monkeypatch)
    assert key in message, message
    assert "1.5" not in message or command != "serve"  # a token's value is never echoed


@pytest.mark.integration
@pytest.mark.parametrize("command, override, key", [
    ("train", "train.lr=abc", "train.lr"),
    ("serve", "serve.auth_token=1.5", "serve.auth_token"),
])
def test_every_job_exits_2_with_one_line_on_the_command_line(command, override, key):
    """Each command's wiring (one line, exit status 2) for a mistake in its settings (eval's
    is tests/test_config_settings.py's, tag's the storage mistake above)."""
    result = subprocess.run([EMOTION, command, "data.root=/nowhere", override] if command != "serve"
                            else [EMOTION, command, override], cwd=PROJECT_ROOT, capture_output=True, text=True,
                            timeout=120)
    text = (result.stdout + result.stderr).strip()
    assert result.returncode == 2, text
    assert len(text.splitlines()) == 1 and "Traceback" not in text and key in text, text
    assert "1.5" not in text  # a token's value is never echoed
