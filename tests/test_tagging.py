"""The tagging job end to end on a real local Ray with the real pretrained models."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from hydra import compose, initialize_config_dir

from emotion.labels import FERPLUS_CLASSES
from emotion.schema import image_id_for, labels_from_schema
from emotion.tagging.output import OutputMismatch
from tests.conftest import PROJECT_ROOT, write_awkward_images
from tests.s3_server import s3_bucket, s3_endpoint, s3_server  # noqa: F401 (fixtures)

CONFIG_DIR = str(PROJECT_ROOT / "jobs" / "configs")


def compose_tag(overrides: list[str]):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="tag", overrides=overrides)


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory, sample_photos, fer_root) -> tuple[Path, dict]:
    """Real photos, FER faces, awkward formats and corrupt files, in nested folders."""
    root = tmp_path_factory.mktemp("mixed")
    (root / "photos").mkdir()
    for name, path in sample_photos.items():
        shutil.copy(path, root / "photos" / f"{name}.jpg")
    (root / "fer" / "happy").mkdir(parents=True)
    for path in sorted((fer_root / "val" / "happy").glob("*.jpg"))[:3]:
        shutil.copy(path, root / "fer" / "happy" / path.name)
    expected_errors = write_awkward_images(root / "awkward", sample_photos["obama"])
    (root / "notes.txt").write_text("not listed: not an image suffix")
    return root, expected_errors


def read_output(output: Path):
    files = sorted(output.glob("*.parquet"))
    assert files, "no Parquet written"
    return pq.read_table(files), files


def test_tag_mixed_folder_one_row_per_person_and_resume(ray_local, mixed_folder, tmp_path):
    from jobs.tag import run

    root, expected_errors = mixed_folder
    output = tmp_path / "tags"
    cfg = compose_tag([f"input={root}", f"output={output}", "ray.num_cpus=2"])
    summary = run(cfg)

    images = sorted(str(p) for p in root.rglob("*") if p.suffix in (".jpg", ".png"))
    table, files = read_output(output)
    rows = table.to_pylist()
    # The default face model is the shipped QCS: FER+'s 8 classes.
    assert labels_from_schema(pq.read_schema(files[0])) == list(FERPLUS_CLASSES)
    # Every input image appears, nothing else does, and (image, person) pairs are unique.
    assert sorted({r["source"] for r in rows}) == images
    pairs = [(r["source"], r["person_index"]) for r in rows]
    assert len(pairs) == len(set(pairs))
    assert summary.images == len(images)

    by_name = {}
    for r in rows:
        by_name.setdefault(Path(r["source"]).name, []).append(r)
    # Corrupt files: exactly one row, with the reason.
    for name, error in expected_errors.items():
        if error is not None:
            (row,) = by_name[name]
            assert row["error"] and error in row["error"] and row["person_index"] is None
    assert summary.errors == sum(e is not None for e in expected_errors.values())
    # The real photo: one face, inside the image, a plausible score vector.
    (obama,) = by_name["obama.jpg"]
    assert obama["error"] is None and obama["person_index"] == 0
    x1, y1, x2, y2 = obama["face_box"]
    assert 0 <= x1 < x2 <= obama["image_width"] and 0 <= y1 < y2 <= obama["image_height"]
    assert obama["detector_score"] > 0.9
    assert abs(sum(obama["scores"]) - 1) < 1e-4 and len(obama["emotions"]) == 1
    assert obama["image_id"] == image_id_for(obama["source"])
    assert obama["level_scores"]["head"] == obama["scores"] and obama["level_scores"]["body"] is None
    # Awkward-but-valid formats decode and find the same face.
    for name in ("gray.png", "palette.png", "cmyk.jpg", "alpha.png", "gray16.png", "rotated_exif.jpg"):
        assert all(r["error"] is None for r in by_name[name]), name
        assert any(r["person_index"] == 0 for r in by_name[name]), f"no face found in {name}"

    # Resume: a second run over the same output tags nothing new and writes no duplicates.
    again = run(cfg)
    assert again.images == 0 and again.skipped_already_tagged == len(images)
    table2, files2 = read_output(output)
    assert len(table2) == len(table) and files2 == files


def test_tag_resume_after_partial_output(ray_local, mixed_folder, tmp_path):
    """Images tagged by an earlier (interrupted) run are not tagged again."""
    from jobs.tag import run

    root, _ = mixed_folder
    output = tmp_path / "tags"
    # The first run uses the fused stage (detect + recognize in one actor pool), the
    # second the two pools: both write the same kind of units.
    first = run(compose_tag([f"input={root}/photos", f"output={output}", "detector=full_frame", "stages.fuse=true"]))
    assert first.images == 3
    rest = run(compose_tag([f"input={root}", f"output={output}", "detector=full_frame"]))
    table, files = read_output(output)
    sources = table.column("source").to_pylist()
    assert rest.skipped_already_tagged == 3
    assert len(sources) == len(set(sources))  # full_frame: one row per image, never twice
    # Rows cut one way are not added to by a run that cuts faces another way: refused before
    # anything is written, naming the key. Where the crops are cut is not part of it.
    with pytest.raises(OutputMismatch, match=r"other crop settings.*detector\.head_expand=1\.0 there, 1\.2 here"):
        run(compose_tag([f"input={root}", f"output={output}", "detector=full_frame", "detector.head_expand=1.2"]))
    with pytest.raises(OutputMismatch, match=r"detector\.find_face=True there, False here"):
        run(compose_tag([f"input={root}", f"output={output}", "detector=full_frame", "detector.find_face=false"]))
    with pytest.raises(OutputMismatch, match=r"predictor\.score_weights=None there, \{'neutral': 0\.6\} here"):
        run(compose_tag([f"input={root}", f"output={output}", "detector=full_frame",
                         "predictor.score_weights={neutral:0.6}"]))
    assert read_output(output)[1] == files
    again = run(compose_tag([f"input={root}", f"output={output}", "detector=full_frame", "predictor.crops=pil"]))
    assert again.images == 0


def test_decode_in_the_actors_and_threaded_actors_give_the_rows_of_decode_tasks(ray_local, mixed_folder, tmp_path):
    """``stages.decode.in_actors``: the predict actors reading and decoding their own
    batches (the CPU default) tag exactly as decode tasks feeding them do, error rows
    for the corrupt files included; and one actor running three batches at once in
    threads (``concurrent_batches=3``) tags as the default one-batch actors do."""
    from jobs.tag import run

    root, _ = mixed_folder
    variants = {
        "in_actors": ["stages.decode.in_actors=true"],
        "decode_tasks": ["stages.decode.in_actors=false"],
        "one_actor_threaded": ["stages.decode.in_actors=true", "stages.predict.concurrent_batches=3",
                               "stages.predict.pool_min=1", "stages.predict.pool_max=1",
                               "stages.predict.num_cpus=1"],
    }
    tables = {}
    for name, overrides in variants.items():
        output = tmp_path / name
        summary = run(compose_tag([f"input={root}", f"output={output}", *overrides]))
        assert summary.errors > 0  # the corrupt files
        assert sum(summary.images_by_node.values()) == summary.images  # counted from the rows
        table, _ = read_output(output)
        assert "detect_node" not in table.column_names and "rows_in_image" not in table.column_names
        tables[name] = sorted(
            (r["source"], r["person_index"] if r["person_index"] is not None else -1, r["error"],
             tuple(round(v, 3) for v in r["face_box"] or ()), tuple(round(v, 4) for v in r["scores"] or ()))
            for r in table.to_pylist())
    assert tables["in_actors"] == tables["decode_tasks"] == tables["one_actor_threaded"]


def test_pipeline_counts_each_image_once_per_node_even_split_across_batches():
    """The driver counts images, people, errors and images per node from the rows: an
    image's rows split over two batches count once (at its first row)."""
    import pyarrow as pa

    from emotion.tagging.progress import PipelineCounts

    def batch(rows):
        source, person, error, node = zip(*rows)
        return pa.table({"source": list(source), "person_index": pa.array(person, pa.int32()),
                         "error": pa.array(error, pa.string()), "detect_node": list(node)})

    counts = PipelineCounts()
    counts.add(batch([("a.jpg", 0, None, "n1"), ("a.jpg", 1, None, "n1"),  # a: 3 people, split
                      ("b.jpg", None, None, "n2"),                          # b: nobody in it
                      ("c.jpg", None, "cannot identify image file", "n2")]))  # c: an error row
    counts.add(batch([("a.jpg", 2, None, "n1"), ("d.jpg", 0, None, "n1")]))
    assert (counts.images, counts.people, counts.errors) == (4, 4, 1)
    assert counts.images_by_node == {"n1": 2, "n2": 2}


def test_manifest_input_and_missing_input(ray_local, mixed_folder, tmp_path):
    import pyarrow as pa

    from emotion.tagging.inputs import list_sources

    root, _ = mixed_folder
    photos = sorted(str(p) for p in (root / "photos").glob("*.jpg"))
    pq.write_table(pa.table({"path": photos + photos[:1]}), tmp_path / "manifest.parquet")
    assert list_sources(str(tmp_path / "manifest.parquet")) == photos + photos[:1]
    (tmp_path / "m.csv").write_text("path\n" + "\n".join(Path(p).name for p in photos) + "\n")
    shutil.copy(photos[0], tmp_path / Path(photos[0]).name)
    assert list_sources(str(tmp_path / "m.csv"))[0] == str(tmp_path / Path(photos[0]).name)
    assert list_sources(f"{root}/photos/*.jpg") == photos
    with pytest.raises(FileNotFoundError):
        list_sources(str(tmp_path / "nothing-here"))
    with pytest.raises(KeyError, match="no 'path' column"):
        pq.write_table(pa.table({"file": photos}), tmp_path / "bad.parquet")
        list_sources(str(tmp_path / "bad.parquet"))


def test_tag_reads_and_writes_s3(ray_local, s3_bucket, sample_photos):
    """Images from an s3:// prefix on a real S3-compatible server, Parquet back to s3://."""
    import pyarrow.parquet as pq

    from emotion import storage
    from jobs.tag import run

    for name, path in sample_photos.items():
        storage.write_bytes(f"s3://{s3_bucket}/photos/{name}.jpg", path.read_bytes())
    storage.write_bytes(f"s3://{s3_bucket}/photos/bad.png", b"\x89PNG broken")
    summary = run(compose_tag([f"input=s3://{s3_bucket}/photos/", f"output=s3://{s3_bucket}/tags"]))
    assert summary.images == 4 and summary.errors == 1 and summary.people == 3
    fs, _ = storage.get_filesystem(f"s3://{s3_bucket}/tags")
    files = storage.list_files(f"s3://{s3_bucket}/tags", suffixes=(".parquet",))
    table = pq.read_table([f[len("s3://"):] for f in files], filesystem=fs)
    assert sorted(set(table.column("source").to_pylist())) == sorted(
        [f"s3://{s3_bucket}/photos/{n}.jpg" for n in sample_photos] + [f"s3://{s3_bucket}/photos/bad.png"])
    # Resume works on s3:// too.
    again = run(compose_tag([f"input=s3://{s3_bucket}/photos/", f"output=s3://{s3_bucket}/tags"]))
    assert again.images == 0 and again.skipped_already_tagged == 4


# A predict stage with 1-thread actors and at least two of them.
PREDICT_STAGE = {"pool_min": 2, "pool_max": "auto", "num_gpus": "auto", "gpu_fraction": 0.5, "torch_threads": 1,
                 "concurrent_batches": 1, "batch_size": 8, "num_cpus": 0.5, "max_tasks_in_flight": None,
                 "scheduling_strategy": None, "resources": None, "max_restarts": 0}


def test_a_small_job_starts_no_more_actors_than_it_has_batches(ray_local):
    """The first actor stage's pool is capped at the batches it can get: three photos in
    one input block start one actor, not the two that pool_min asks for (the second
    would load both models on the cores the first one works on, for nothing)."""
    from emotion.pipelines.tagging import _pool
    from emotion.settings import ActorStage
    from emotion.tagging.pools import most_batches

    assert most_batches(3, 8, 8) == 1
    assert most_batches(300, 8, 8) == 38
    assert most_batches(24, 2, 1) == 12  # batches smaller than blocks: one per block
    assert most_batches(100, 8, 32) == 4  # larger: Ray Data bundles blocks up to the batch size
    stage = ActorStage.model_validate(PREDICT_STAGE)
    small = _pool(stage, use_gpu=False, batches=1)["compute"]
    assert (small.min_size, small.max_size) == (1, 1)
    large = _pool(stage, use_gpu=False, batches=38)["compute"]  # the fixture's Ray has 2 CPUs
    assert (large.min_size, large.max_size) == (2, 2)


def test_auto_pool_max_fills_the_cores_or_the_gpus_and_keeps_pool_min():
    """``pool_max: auto`` (the local predict stage): one 1-thread actor per core, one
    three-batch actor per three cores, as many GPU shares as the GPUs hold; never below
    ``pool_min``. On this project's 2-core CI machine it gives the two actors measured."""
    from emotion.settings import ActorStage
    from emotion.tagging.pools import auto_pool_max

    def stage(**changes) -> ActorStage:
        return ActorStage.model_validate({**PREDICT_STAGE, **changes})

    assert auto_pool_max(stage(), 0.0, {"CPU": 2.0}) == 2
    assert auto_pool_max(stage(), 0.0, {"CPU": 16.0}) == 16
    assert auto_pool_max(stage(concurrent_batches=3), 0.0, {"CPU": 16.0}) == 5
    assert auto_pool_max(stage(torch_threads=None), 0.0, {"CPU": 16.0}) == 2  # pool_min
    assert auto_pool_max(stage(), 0.5, {"CPU": 16.0, "GPU": 1.0}) == 2
    assert auto_pool_max(stage(), 0.5, {"CPU": 64.0, "GPU": 4.0}) == 8
    assert auto_pool_max(stage(pool_min=1), 0.0, {"CPU": 1.0}) == 1
