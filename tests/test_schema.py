"""The output schema's per-image rules."""

from __future__ import annotations

import pyarrow as pa
import pytest

from emotion.schema import first_row_mask, has_error, split_rows

pytestmark = pytest.mark.unit


def test_each_image_has_one_first_row_whatever_the_row_order():
    # Two people of one image, an image with nobody (null), the first person of a third.
    table = pa.table({"person_index": pa.array([1, 0, None, 0, 2], pa.int32())})
    assert first_row_mask(table).tolist() == [False, True, True, True, False]
    assert first_row_mask(table.slice(0, 0)).tolist() == []
    assert first_row_mask(pa.table({"person_index": pa.array([0, 1], pa.int32())})).tolist() == [True, False]


def test_error_cells_and_rows_per_image():
    assert has_error("corrupt") and not has_error("") and not has_error(None) and not has_error(float("nan"))
    table = pa.table({"x": [10, 11, 12]})
    parts = split_rows(table, [1, 0, 1], 3)
    assert [p.column("x").to_pylist() for p in parts] == [[11], [10, 12], []]
