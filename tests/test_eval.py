"""`emotion eval` on a real FER2013 subset, and the CLI front."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir

from tests.conftest import PROJECT_ROOT

CONFIG_DIR = str(PROJECT_ROOT / "jobs" / "configs")


def test_eval_fer_subset_accuracy(fer_root, capsys):
    from jobs.eval import run

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="eval", overrides=[
            "model=fer", "data=image_folder", f"data.root={fer_root / 'val'}", "limit_per_class=30"])
    report = run(cfg)
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["n"] == 7 * 30 and line["no_prediction"] == 0
    assert set(line["per_class"]) == {"angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"}
    # The full val split gives 0.584; a 210-image subset lands near it.
    assert line["accuracy"] >= 0.5
    assert line["per_class"]["happy"] >= 0.7
    assert report["accuracy"] == line["accuracy"]


def test_eval_rejects_unknown_classes(tmp_path):
    from PIL import Image

    from jobs.eval import run

    (tmp_path / "bored").mkdir()
    Image.new("RGB", (48, 48)).save(tmp_path / "bored" / "a.jpg")
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="eval", overrides=[f"data.root={tmp_path}"])
    with pytest.raises(ValueError, match="bored"):
        run(cfg)


def test_cli_help_and_unknown_command():
    out = subprocess.run([sys.executable, "-m", "emotion.cli", "--help"], capture_output=True, text=True, check=True)
    assert "tag" in out.stdout and "eval" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "emotion.cli", "frobnicate"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown command" in bad.stderr


def test_cli_reports_bad_config_key(tmp_path):
    """A typo in an override names the key instead of crashing with a traceback."""
    bad = subprocess.run([sys.executable, "-m", "emotion.cli", "tag", "detector.scroe_threshold=0.5"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode != 0 and "scroe_threshold" in bad.stderr
