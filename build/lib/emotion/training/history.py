"""Per-epoch metrics, written as ``metrics.csv`` and ``metrics.json`` (local or s3://).

The history is a list of flat dicts, one per finished epoch, kept inside every
checkpoint, so after a crash and resume the files are rewritten from the checkpoint's
history and never hold an epoch twice or an epoch the resumed run threw away.
"""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any, Mapping, Sequence

from emotion import storage

CSV_NAME = "metrics.csv"
JSON_NAME = "metrics.json"


def _scalar(value: Any) -> bool:
    return isinstance(value, (int, float, str, bool)) or value is None


def history_csv(history: Sequence[Mapping[str, Any]]) -> str:
    """CSV text of the scalar columns of ``history`` (column order: first appearance)."""
    columns: list[str] = []
    for row in history:
        columns += [key for key, value in row.items() if _scalar(value) and key not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({key: ("" if row.get(key) is None else row.get(key)) for key in columns})
    return buffer.getvalue()


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_history(output: str, history: Sequence[Mapping[str, Any]], summary: Mapping[str, Any] | None = None) -> tuple[str, str]:
    """Write ``<output>/metrics.csv`` and ``<output>/metrics.json``; returns their locations."""
    csv_uri, json_uri = storage.join(output, CSV_NAME), storage.join(output, JSON_NAME)
    storage.write_bytes(csv_uri, history_csv(history).encode())
    document = {"epochs": list(history), **({"summary": dict(summary)} if summary else {})}
    storage.write_bytes(json_uri, json.dumps(_json_safe(document), indent=2).encode())
    return csv_uri, json_uri
