"""The per-image lines and annotated images of a tagging run, from hand-built output (no Ray)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from emotion.images import decode_image
from emotion.schema import image_id_for, output_schema
from emotion.tagging.report import (
    ANNOTATE_MAX_SIDE,
    annotate,
    fit,
    image_line,
    output_names,
    TaggedImage,
    print_images,
    read_images,
    top_emotion,
)
from emotion.preflight import check_output_location
from emotion.settings import ConfigError

pytestmark = pytest.mark.unit

LABELS = ["angry", "happy", "neutral", "sad"]


def _scores(best: int, score: float) -> list[float]:
    rest = (1.0 - score) / (len(LABELS) - 1)
    return [score if i == best else rest for i in range(len(LABELS))]


def _row(source: str, **values) -> dict:
    row = {name: None for name in output_schema(LABELS).names}
    row.update(image_id=image_id_for(source), source=source, model="test@sha256:0", refined=False,
               image_width=0, image_height=0)
    row.update(values)
    return row


def _person(source: str, size: tuple[int, int], index: int, face, body, best: int, score: float) -> dict:
    width, height = size
    return _row(source, person_index=index, face_box=face, body_box=body, detector_score=0.99,
                emotions=[LABELS[best]], scores=_scores(best, score), image_width=width, image_height=height)


@pytest.fixture()
def collection(sample_photos, tmp_path) -> dict:
    """A committed output of three images (two people, no person, a failed one) over real photos."""
    photos = tmp_path / "photos"
    photos.mkdir()
    crowd = photos / "crowd.jpg"
    shutil.copy(sample_photos["batman"], crowd)  # 1440x1405: larger than the annotate size
    empty = photos / "empty.jpg"
    shutil.copy(sample_photos["obama"], empty)
    bad = photos / "bad.jpg"
    bad.write_bytes(b"not a JPEG")
    size = Image.open(crowd).size
    faces = [[300.0, 200.0, 500.0, 450.0], [900.0, 300.0, 1050.0, 480.0]]
    bodies = [[150.0, 150.0, 650.0, 1300.0], [800.0, 250.0, 1150.0, 1400.0]]
    # People arrive out of person_index order (Ray Data may split and reorder an image's rows).
    rows = [
        _person(str(crowd), size, 1, faces[1], bodies[1], best=3, score=0.55),
        _row(str(bad), error="not an image file (format not recognised)"),
        _person(str(crowd), size, 0, faces[0], bodies[0], best=1, score=0.91),
    ]
    first = tmp_path / "out" / "part-1.parquet"
    second = tmp_path / "out" / "part-2.parquet"
    first.parent.mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=output_schema(LABELS)), first)
    width, height = Image.open(empty).size
    pq.write_table(pa.Table.from_pylist([_row(str(empty), image_width=width, image_height=height)],
                                        schema=output_schema(LABELS)), second)
    return {"files": [str(first), str(second)], "crowd": crowd, "faces": faces, "bodies": bodies}


def test_top_emotion_is_the_argmax_of_the_scores():
    assert top_emotion([0.1, 0.2, 0.6, 0.1], LABELS) == ("neutral", pytest.approx(0.6))
    label, score = top_emotion(None, LABELS)
    assert label is None and math.isnan(score)


def test_one_line_per_image_sorted_by_name(collection, capsys):
    print_images(read_images(collection["files"]))
    assert capsys.readouterr().out.splitlines() == [
        "bad.jpg: error: not an image file (format not recognised)",
        "crowd.jpg: 2 people: happy 0.91, sad 0.55",
        "empty.jpg: no person",
    ]


def test_line_of_one_person_and_an_escaped_name(tmp_path):
    source = "/photos/caf\\xe9.jpg"  # how a name that is not UTF-8 appears in `source`
    path = tmp_path / "one.parquet"
    row = _person(source, (100, 100), 0, [10.0, 10.0, 50.0, 50.0], None, best=1, score=0.44)
    pq.write_table(pa.Table.from_pylist([row], schema=output_schema(LABELS)), path)
    (image,) = read_images([str(path)])
    assert image_line(image) == "caf\\xe9.jpg: 1 person: happy 0.44"


def test_annotate_writes_shrunk_jpegs_with_the_boxes_drawn(collection, tmp_path):
    folder = tmp_path / "annotated"
    result = annotate(read_images(collection["files"]), str(folder))

    assert sorted(p.name for p in folder.iterdir()) == ["crowd.jpg", "empty.jpg"]
    assert result.failed == 1 and result.unreadable == 0
    assert result.render() == f"annotated 2 images into {folder} (skipped 1 failed)"

    original = decode_image(collection["crowd"].read_bytes()).pixels
    drawn = np.asarray(Image.open(folder / "crowd.jpg").convert("RGB"))
    scale = max(original.shape[:2]) / ANNOTATE_MAX_SIDE
    assert max(drawn.shape[:2]) == ANNOTATE_MAX_SIDE
    assert drawn.shape[:2] == (round(original.shape[0] / scale), round(original.shape[1] / scale))
    shrunk = np.asarray(Image.fromarray(original).resize(drawn.shape[1::-1], Image.BILINEAR))
    for box in collection["faces"] + collection["bodies"]:
        x1, y1, x2, y2 = (round(v / scale) for v in box)
        # The box's left edge, between its corners (labels sit at the top): the outline's pixels.
        edge = (slice(y1 + 40, y2 - 10), slice(x1, x1 + 2))
        change = np.abs(drawn[edge].astype(int) - shrunk[edge].astype(int)).mean()
        assert change > 40, f"box {box}: outline pixels changed by {change:.1f} on average"
    # Far from every box the photo is as it was (JPEG noise aside).
    corner = (slice(0, 100), slice(shrunk.shape[1] - 100, None))
    assert np.abs(drawn[corner].astype(int) - shrunk[corner].astype(int)).mean() < 6

    empty = Image.open(folder / "empty.jpg")
    assert empty.format == "JPEG" and empty.size == Image.open(tmp_path / "photos" / "empty.jpg").size


def test_tiny_images_are_enlarged_for_their_labels_and_large_ones_shrunk():
    small, scale = fit(np.zeros((48, 40, 3), np.uint8), max_side=1280, min_side=320)
    assert small.shape == (320, 267, 3) and scale == pytest.approx(48 / 320)
    large, scale = fit(np.zeros((2000, 1000, 3), np.uint8), max_side=1280, min_side=320)
    assert large.shape == (1280, 640, 3) and scale == pytest.approx(2000 / 1280)
    same, scale = fit(np.zeros((500, 550, 3), np.uint8), max_side=1280, min_side=320)
    assert same.shape == (500, 550, 3) and scale == 1.0


def test_annotate_skips_sources_gone_since_the_run(collection, tmp_path):
    collection["crowd"].unlink()
    result = annotate(read_images(collection["files"]), str(tmp_path / "annotated"))
    assert [Path(uri).name for uri in result.written] == ["empty.jpg"]
    assert (result.failed, result.unreadable) == (1, 1)
    assert result.render().endswith("(skipped 1 failed, 1 unreadable)")


def test_shared_base_names_get_the_image_id():
    images = [TaggedImage(image_id_for(s), s, None) for s in ("/a/x.jpg", "/b/x.png", "/c/y.jpg")]
    names = output_names(images)
    assert names[images[0].image_id] == f"x-{images[0].image_id[:8]}.jpg"
    assert names[images[1].image_id] == f"x-{images[1].image_id[:8]}.jpg"
    assert names[images[2].image_id] == "y.jpg"


def test_annotate_folder_that_is_a_file_is_refused_naming_the_key(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(ConfigError, match="annotate="):
        check_output_location(str(blocker), key="annotate")


def test_annotated_jpeg_decodes(collection, tmp_path):
    folder = tmp_path / "annotated"
    annotate(read_images(collection["files"]), str(folder))
    for path in folder.iterdir():
        decoded = decode_image(path.read_bytes())
        assert decoded.format == "JPEG" and decoded.pixels.ndim == 3
    assert not list(folder.glob(".*"))  # no temporary files left behind
