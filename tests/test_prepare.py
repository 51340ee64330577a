"""prepare_dataset: datasets -> Parquet shards + statistics, and back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from emotion import storage
from emotion.data import read_dataset
from emotion.data.prepare import decode_row, list_shards, prepare_dataset, prepared_labels, read_prepared
from emotion.data.stats import compute_stats, stats_from_table
from emotion.data.synthetic import generate_synthetic_emotic
from emotion.images import decode_image
from tests.configs import synth_options
from tests.s3_server import s3_bucket, s3_endpoint, s3_server  # noqa: F401 (fixtures)


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    generate_synthetic_emotic(root, **synth_options(n_train=11, n_val=4, n_test=3, seed=5))
    return root


def test_round_trip_through_parquet(synthetic_root: Path, tmp_path: Path):
    out = tmp_path / "prepared"
    report = prepare_dataset("synthetic", str(synthetic_root), str(out), shard_rows=5)
    names = [Path(s).name for s in report["shards"]]
    assert names == ["train-00000.parquet", "train-00001.parquet", "train-00002.parquet", "val-00000.parquet", "test-00000.parquet"]
    assert [Path(s).name for s in list_shards(str(out))] == sorted(names)

    source = read_dataset("synthetic", str(synthetic_root))
    table = read_prepared(str(out))
    assert table.num_rows == 18
    assert prepared_labels(table) == ("synthetic", source.labels)
    rows = {row["image_uri"]: row for row in table.to_pylist()}
    for sample in source.samples():
        row = rows[sample["image_uri"]]
        assert row["split"] == sample["split"] and (row["width"], row["height"]) == (160, 160)
        decoded = decode_row(row)
        expected = decode_image(Path(sample["image_uri"]).read_bytes()).pixels
        np.testing.assert_array_equal(decoded.pixels, expected)
        np.testing.assert_array_equal(decoded.person_boxes, sample["person_boxes"])
        np.testing.assert_array_equal(decoded.face_boxes, sample["face_boxes"])
        np.testing.assert_array_equal(decoded.labels, sample["labels"])
        np.testing.assert_array_equal(decoded.vad, sample["vad"])

    val = read_prepared(str(out), split="val")
    assert val.num_rows == 4 and set(val.column("split").to_pylist()) == {"val"}
    assert prepared_labels(val)[1] == source.labels


def test_stats_files_hold_the_right_counts(synthetic_root: Path, tmp_path: Path):
    out = tmp_path / "prepared"
    report = prepare_dataset("synthetic", str(synthetic_root), str(out), shard_rows=100)
    source = read_dataset("synthetic", str(synthetic_root))
    stats = report["stats"]
    for split, samples in source.splits.items():
        got = stats["splits"][split]
        labels = np.concatenate([s["labels"] for s in samples])
        assert got["images"] == len(samples)
        assert got["people"] == labels.shape[0]
        assert list(got["class_counts"].values()) == labels.sum(axis=0).astype(int).tolist()
        per_image = np.bincount([s["labels"].shape[0] for s in samples])
        assert got["people_per_image"] == {n: int(c) for n, c in enumerate(per_image) if c}
        assert got["sizes"] == {"160x160": len(samples)} and got["face_boxes_known"] == labels.shape[0]
    assert stats == json.loads((out / "stats.json").read_text(), object_hook=_int_keys)
    text = (out / "stats.txt").read_text()
    assert f"[train] 11 images, {stats['splits']['train']['people']} people" in text
    for name, count in stats["splits"]["val"]["class_counts"].items():
        assert f"{name}" in text and str(count) in text
    with Image.open(out / "stats.png") as png:
        assert png.format == "PNG" and png.size[0] > 600
    # the same report from the prepared table alone
    assert stats_from_table(read_prepared(str(out)), source.labels, "synthetic")["splits"] == stats["splits"]


def _int_keys(mapping: dict) -> dict:
    return {int(k) if k.isdigit() else k: v for k, v in mapping.items()}


def test_unreadable_images_are_skipped_and_reported(tmp_path: Path):
    root = tmp_path / "faces"
    for name in ("happy/a.jpg", "happy/b.jpg", "sad/c.jpg"):
        (root / "train" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((48, 48), 90, np.uint8)).save(root / "train" / name)
    (root / "train/sad/broken.jpg").write_bytes(b"\xff\xd8 this is not really a jpeg")
    out = tmp_path / "prepared"
    for options in ({"image_size": (48, 48)}, {}):  # sizes given, or probed (and failing) by the reader
        report = prepare_dataset("fer", str(root), str(out), reader_options=options, overwrite=True)
        assert read_prepared(str(out)).num_rows == 3
        (skipped,) = report["stats"]["skipped"]
        assert skipped["image_uri"].endswith("broken.jpg") and "unreadable" in skipped["reason"]
        assert "broken.jpg" in (out / "stats.txt").read_text()
    broken = [s for s in read_dataset("fer", str(root)).samples() if s["image_uri"].endswith("broken.jpg")]
    assert broken[0]["width"] == -1 and np.isnan(broken[0]["face_boxes"]).all()


def test_existing_output_needs_overwrite(synthetic_root: Path, tmp_path: Path):
    out = str(tmp_path / "prepared")
    prepare_dataset("synthetic", str(synthetic_root), out, shard_rows=2, plot=False)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        prepare_dataset("synthetic", str(synthetic_root), out)
    report = prepare_dataset("synthetic", str(synthetic_root), out, shard_rows=100, splits=["val"], overwrite=True)
    assert [Path(s).name for s in list_shards(out)] == ["val-00000.parquet"] == [Path(s).name for s in report["shards"]]
    assert read_prepared(out).num_rows == 4


def test_prepare_to_s3_and_read_back(synthetic_root: Path, s3_bucket: str):
    out = f"s3://{s3_bucket}/prepared/synthetic"
    report = prepare_dataset("synthetic", str(synthetic_root), out, shard_rows=8, max_images_per_split=8)
    assert all(s.startswith(out + "/") for s in report["shards"])
    table = read_prepared(out)
    assert table.num_rows == 8 + 4 + 3
    assert storage.read_bytes(f"{out}/stats.txt").decode().startswith("label set: synthetic")
    assert storage.read_bytes(f"{out}/stats.png")[:8] == b"\x89PNG\r\n\x1a\n"
    source = {s["image_uri"]: s for s in read_dataset("synthetic", str(synthetic_root)).samples()}
    for row in table.to_pylist():
        np.testing.assert_array_equal(decode_row(row).labels, source[row["image_uri"]]["labels"])


def test_missing_prepared_dataset_is_a_clear_error(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="run prepare_dataset first"):
        read_prepared(str(tmp_path / "nothing"))


def test_compute_stats_counts_unknown_boxes(tmp_path: Path):
    from emotion.data.records import make_sample, one_hot

    samples = [
        make_sample("a.jpg", "train", one_hot([0], 2), "x", face_boxes=[[0, 0, 4, 4]], width=4, height=4),
        make_sample("b.jpg", "train", one_hot([1, 1], 2), "x"),
    ]
    stats = compute_stats(samples, ("cat", "dog"), "x")["splits"]["train"]
    assert stats["class_counts"] == {"cat": 1, "dog": 2}
    assert stats["face_boxes_known"] == 1 and stats["body_boxes_known"] == 0
    assert stats["people_per_image"] == {1: 1, 2: 1} and stats["sizes"] == {"4x4": 1}
