"""What an input image is called in the output, losslessly, whatever bytes its name has.

Linux file names are bytes. Python lists them as ``str``, mapping bytes that are not
UTF-8 to lone surrogates ("surrogateescape"); Arrow strings (and JSON) cannot hold
those. So a source has two parts:

* ``source`` (string column): the name as text. Valid UTF-8 names are as listed; other
  bytes appear as ``\\xNN`` escapes (``caf\\xe9.jpg``), readable but not unique;
* ``source_bytes`` (binary column): the exact bytes of the name when it is not valid
  UTF-8, else null. ``source_path`` turns the pair back into the path to open.

Inside Ray batches an empty ``source_bytes`` (``b""``) stands for null: a file name is
never empty, and object columns of bytes-or-None do not survive Arrow conversion.
"""

from __future__ import annotations

import os
from typing import Sequence

import pyarrow as pa


class UnnameableSourceError(ValueError):
    """A name that is neither valid text nor bytes from the file system (a lone surrogate
    that did not come from surrogateescape, e.g. in a manifest). ``shown`` is the name
    with the offending characters escaped."""

    def __init__(self, shown: str):
        super().__init__(f"file name {shown!r} is not valid text and not file-system bytes")
        self.shown = shown


def encode_source(path: str) -> tuple[str, bytes]:
    """A listed path -> (``source`` text, ``source_bytes``; ``b""`` when the text is exact).

    Raises:
        UnnameableSourceError: the name cannot be turned into bytes; the message holds
            an escaped form of it.
    """
    try:
        path.encode("utf-8")
        return path, b""
    except UnicodeEncodeError:
        pass
    try:
        raw = os.fsencode(path)  # surrogateescape: the bytes as they are on disk
    except UnicodeEncodeError:
        shown = path.encode("utf-8", "backslashreplace").decode("ascii", "replace")
        raise UnnameableSourceError(shown) from None
    return raw.decode("utf-8", "backslashreplace"), raw


def source_path(text: str, raw: bytes | None) -> str:
    """The path to open for a (``source``, ``source_bytes``) pair."""
    return os.fsdecode(raw) if raw else text


def source_keys(table: pa.Table) -> list[str]:
    """The path of each row's image (``source_path``) in a table with a ``source`` column
    and, optionally, ``source_bytes``."""
    raw = table.column("source_bytes").to_pylist() if "source_bytes" in table.column_names else None
    texts = table.column("source").to_pylist()
    return [source_path(t, raw[i] if raw else None) for i, t in enumerate(texts)]


def source_blocks(inputs: Sequence[tuple[str, int]], block: int) -> list[pa.Table]:
    """A job's input rows in tables of ``block`` rows: ``source`` text, ``source_bytes``,
    listed ``size`` (-1 unknown), and ``error`` for a name that cannot be handled."""
    texts, raws, errors = [], [], []
    for path, _ in inputs:
        try:
            text, raw = encode_source(path)
            error = ""
        except UnnameableSourceError as exc:
            text, raw, error = exc.shown, b"", str(exc)
        texts.append(text)
        raws.append(raw)
        errors.append(error)
    sizes = [size for _, size in inputs]
    return [pa.table({"source": pa.array(texts[i:i + block], pa.string()),
                      "source_bytes": pa.array(raws[i:i + block], pa.binary()),
                      "size": pa.array(sizes[i:i + block], pa.int64()),
                      "error": pa.array(errors[i:i + block], pa.string())})
            for i in range(0, len(inputs), block)]
