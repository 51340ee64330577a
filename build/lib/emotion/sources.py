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

from emotion import storage


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



def read_source(path: str, max_bytes: int | None = None, known_size: int = -1) -> tuple[bytes | None, str | None]:
    """(the file's bytes, None), or (None, why it could not be read): in tagging and
    evaluation a read failure is that image's error, never the end of the job. A file
    above ``max_bytes`` is refused before it is read (``storage.read_bytes``)."""
    try:
        return storage.read_bytes(path, max_bytes=max_bytes, known_size=known_size), None
    except storage.FileTooLargeError as exc:
        return None, f"file too large: {exc}"
    except Exception as exc:  # noqa: BLE001 - any read failure becomes the image's error
        return None, f"read failed: {type(exc).__name__}: {exc}"
