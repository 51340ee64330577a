"""The library path runs on a bare host: torch, torchvision, pyarrow, pydantic, PyYAML and
the weight wheels; no Ray, no Hydra.

``benchmarks/bench_hotpath.py`` is that path's entry point. These tests run it with the
job-side packages made unimportable, and check that its Hydra-free config reader gives
the predictor the same settings as the composed tag config.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"

# What a bare CUDA host does not have: Ray, Hydra and its config library, the S3 clients of
# the job side, and h5py (only the fer model's Keras weights). Model configs are checked by
# their family's typed class (pydantic) wherever a network is built, so pydantic travels.
JOB_SIDE_PACKAGES = ("ray", "hydra", "omegaconf", "boto3", "botocore", "pandas", "h5py")

_RUN_WITHOUT = """
import runpy, sys
blocked = {blocked!r}

class NotInstalled:  # as if the packages were missing: their import raises ModuleNotFoundError
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, NotInstalled)
sys.path.insert(0, {benchmarks!r})
sys.argv = ["bench_hotpath.py", *{argv!r}]
runpy.run_path({script!r}, run_name="__main__")
leaked = sorted(m for m in sys.modules if m.split(".")[0] in blocked)
print("LEAKED", leaked)
"""


@pytest.fixture
def bench_hotpath(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import bench_hotpath

    return bench_hotpath


@pytest.mark.parametrize("model", ["fer", "qcs"])
def test_config_without_hydra_matches_the_composed_tag_config(bench_hotpath, monkeypatch, model):
    composed = bench_hotpath.config("cpu", 960, model, None)
    monkeypatch.setitem(sys.modules, "hydra", None)
    flat = bench_hotpath.config("cpu", 960, model, None)
    assert set(flat) == {"detector", "model", "predictor"}
    for section, values in flat.items():
        # The flat reader skips nested values (none of which the predictor reads); every
        # scalar it reads must be what Hydra composes.
        assert values, section
        for key, value in values.items():
            assert composed[section][key] == value, (section, key)


def test_hotpath_runs_without_ray_hydra_or_h5py(tmp_path):
    out = tmp_path / "hotpath.json"
    argv = ["--device", "cpu", "--photos", "2", "--batch", "2", "--reps", "1", "--threads", "1",
            "--workspace-backbones", "", "--out", str(out)]
    code = _RUN_WITHOUT.format(blocked=JOB_SIDE_PACKAGES, benchmarks=str(BENCHMARKS), argv=argv,
                               script=str(BENCHMARKS / "bench_hotpath.py"))
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "LEAKED []" in result.stdout, result.stdout[-2000:]
    results = json.loads(out.read_text())
    for key in ("decode_photos_per_s", "model_only_photos_per_s", "detect_recognize_photos_per_s"):
        assert results[key] > 0, (key, results)
    assert 0 < results["fraction_of_model_only_bound"], results


def test_fer_weights_without_h5py_name_what_to_install(monkeypatch):
    from emotion.models.face import keras_hdf5
    from emotion.weights import KNOWN_WEIGHTS, resolve

    path = resolve(KNOWN_WEIGHTS["fer_mini_xception"])
    monkeypatch.setitem(sys.modules, "h5py", None)  # `import h5py` raises ImportError
    with pytest.raises(ImportError, match="needs h5py"):
        keras_hdf5.read_keras_layer_configs(path)
