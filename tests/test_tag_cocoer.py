"""`emotion tag model=cocoer model.checkpoint=...` end to end on a real local Ray: real
RetinaFace detection on real photos and on synthetic cartoon scenes, head/body/context
crops, the CocoER checkpoint with its workspace, Parquet rows with every level filled.

The checkpoint is a tiny CocoER made in the test (toy backbones, 32x32 crops, ω
pre-trained on synthetic rows by the training family's hook) and saved with
``save_checkpoint``: the tagging path is what is under test here; training runs are in
``test_cocoer_training.py``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from hydra import compose, initialize_config_dir

from emotion.labels import SYNTHETIC_CATEGORIES
from emotion.models.settings import yaml_config
from emotion.schema import labels_from_schema
from tests.configs import loop_settings, synth_options
from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.integration

CONFIG_DIR = str(PROJECT_ROOT / "jobs" / "configs")
COMPETING = ("head", "body", "context")


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    from emotion.data.synthetic import generate_synthetic_emotic

    root = tmp_path_factory.mktemp("synthetic")
    # Test images 0 and 1 of seed 0 show 2 and 3 people whose cartoon faces RetinaFace finds.
    generate_synthetic_emotic(root, **synth_options(n_train=6, n_val=1, n_test=2, image_size=(160, 160), seed=0))
    return root


@pytest.fixture(scope="module")
def cocoer_checkpoint(synthetic_root, tmp_path_factory) -> tuple[Path, str]:
    from emotion.checkpoint import save_checkpoint
    from emotion.data import read_dataset
    from emotion.training.families import get_family
    from emotion.training.rows import build_crop_spec, person_rows
    from emotion.weights import sha256_of

    torch.set_num_threads(1)
    data = read_dataset("synthetic", str(synthetic_root), splits=["train"])
    family = get_family("cocoer")
    torch.manual_seed(0)
    model = family.build_model(yaml_config("cocoer", dict(
        labels=list(data.labels), backbone="toy", vocab_backbone="toy", pretrained=False, input_size=32, d_h=32, d=32,
        n_blocks=1, n_heads=4, d_ff=64)))
    rows = person_rows(data.samples("train"), build_crop_spec(model, head_expand=1.25, max_side=960),
                      num_labels=len(data.labels), multi_label=True)
    family.before_training(model, [rows], loop_settings(projection={"steps": 50}), torch.device("cpu"))
    path = tmp_path_factory.mktemp("ckpt") / "cocoer_tiny.ckpt"
    save_checkpoint(path, model_name="cocoer", model_cfg=model.config, state_dict=model.state_dict(),
                    labels=list(model.labels))
    return path, sha256_of(path)


def test_tag_with_cocoer_fills_every_level_and_the_workspace_fields(ray_local, sample_photos, synthetic_root,
                                                                     cocoer_checkpoint, tmp_path):
    from jobs.tag import run

    checkpoint, sha = cocoer_checkpoint
    folder = tmp_path / "images"
    folder.mkdir()
    for name, path in sample_photos.items():
        shutil.copy(path, folder / f"{name}.jpg")
    for path in sorted((synthetic_root / "synthetic" / "images").glob("test_*.jpg")):
        shutil.copy(path, folder / path.name)
    output = tmp_path / "tags"
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="tag", overrides=[
            f"input={folder}", f"output={output}", "model=cocoer", f"model.checkpoint={checkpoint}",
            "ray.num_cpus=2"])
    summary = run(cfg)

    files = sorted(output.glob("*.parquet"))
    assert files and labels_from_schema(pq.read_schema(files[0])) == list(SYNTHETIC_CATEGORIES)
    rows = pq.read_table(files).to_pylist()
    k = len(SYNTHETIC_CATEGORIES)
    assert {Path(r["source"]).name for r in rows} == {p.name for p in folder.iterdir()}
    assert summary.errors == 0

    people = [r for r in rows if r["person_index"] is not None]
    by_name: dict[str, list[dict]] = {}
    for r in people:
        by_name.setdefault(Path(r["source"]).name, []).append(r)
    # Real detection: the real photo's face, and people in the cartoon scenes.
    assert [r["person_index"] for r in by_name["obama.jpg"]] == [0]
    assert sum(len(by_name.get(f"test_{i:06d}.jpg", [])) for i in range(2)) >= 2
    for r in people:
        assert r["error"] is None and r["refined"] is True
        assert len(r["scores"]) == k and all(0.0 < s < 1.0 for s in r["scores"])
        assert set(r["level_scores"]) == {*COMPETING, "vocabulary"}
        for level, values in r["level_scores"].items():
            assert values is not None and len(values) == k, level
            assert all(0.0 < v < 1.0 for v in values), level
        assert len(r["dropped_levels"]) == 2 and len(set(r["dropped_levels"])) == 2
        assert set(r["dropped_levels"]) <= set(COMPETING)
        assert set(r["emotions"]) <= set(SYNTHETIC_CATEGORIES)
        assert r["model"] == f"cocoer@sha256:{sha[:16]}"
        x1, y1, x2, y2 = r["face_box"]
        bx1, by1, bx2, by2 = r["body_box"]
        assert bx1 <= x1 < x2 <= bx2 + 1e-3 and by1 <= y1 < y2 <= by2 + 1e-3  # the body box holds the face
    # Head, body and context see different windows, so the levels' scores differ.
    first = by_name["obama.jpg"][0]["level_scores"]
    assert not np.allclose(first["head"], first["body"]) and not np.allclose(first["head"], first["context"])
