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
import threading
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from hashlib import blake2b
from typing import Iterable

import numpy as np

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



def read_source(path: str, max_bytes: int | None = None, known_size: int = -1,
                timeout_s: float | None = None) -> tuple[bytes | None, str | None]:
    """(the file's bytes, None), or (None, why it could not be read): in tagging and
    evaluation a read failure is that image's error, never the end of the job. A file
    above ``max_bytes`` is refused before it is read (``storage.read_bytes``), and so is
    anything that is not a regular file. ``timeout_s``: a read still going after this
    many seconds (a stuck network mount, a stalled object store) becomes the error
    ``read timed out`` and the caller goes on; the read itself is left to finish or hang
    in its own thread."""
    if timeout_s is None:
        return _read(path, max_bytes, known_size)
    return _DEADLINE_READS.read(path, max_bytes, known_size, timeout_s)


def _read(path: str, max_bytes: int | None, known_size: int) -> tuple[bytes | None, str | None]:
    try:
        return storage.read_bytes(path, max_bytes=max_bytes, known_size=known_size), None
    except storage.FileTooLargeError as exc:
        return None, f"file too large: {exc}"
    except storage.NotARegularFileError as exc:
        return None, f"not a regular file: {exc}"
    except Exception as exc:  # noqa: BLE001 - any read failure becomes the image's error
        return None, f"read failed: {type(exc).__name__}: {exc}"


class _DeadlineReads:
    """Reads on a small thread pool, each waited for at most its deadline.

    A read past its deadline cannot be interrupted (a blocked system call holds its
    thread), so its pool is abandoned to it and later reads go to a fresh pool: one stuck
    file costs one idle thread, never the job.
    """

    def __init__(self, threads: int = 4):
        self.threads = threads
        self.lock = threading.Lock()
        self.pool: ThreadPoolExecutor | None = None

    def _pool(self) -> ThreadPoolExecutor:
        with self.lock:
            if self.pool is None:
                self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="source-read")
            return self.pool

    def read(self, path: str, max_bytes: int | None, known_size: int,
             timeout_s: float) -> tuple[bytes | None, str | None]:
        pool = self._pool()
        future = pool.submit(_read, path, max_bytes, known_size)
        try:
            return future.result(timeout=timeout_s)
        except FutureTimeout:
            with self.lock:
                if self.pool is pool:
                    self.pool = None
            pool.shutdown(wait=False)
            return None, f"read timed out after {timeout_s:g} s (read_timeout_s): {path}"


_DEADLINE_READS = _DeadlineReads()


def source_digests(keys: Iterable[str]) -> np.ndarray:
    """A 128-bit BLAKE2b digest of each source key (``source_path``), as a NumPy ``S16``
    array: the compact form in which a job remembers which images an output holds (16
    bytes an image, sortable, searchable with ``np.searchsorted``; a collision between
    two names has a chance of about 2^-128 per pair)."""
    return np.array([blake2b(os.fsencode(key), digest_size=16).digest() for key in keys], dtype="S16")


class SourceSet:
    """A set of source keys held as sorted digests (``source_digests``)."""

    def __init__(self, digests: np.ndarray | None = None, sorted_unique: bool = False):
        if digests is None or not len(digests):
            digests = np.empty(0, "S16")
        self.digests = digests if sorted_unique else np.unique(digests)

    def contains(self, digests: np.ndarray) -> np.ndarray:
        """A boolean mask: which of ``digests`` are in the set."""
        if not len(self.digests) or not len(digests):
            return np.zeros(len(digests), bool)
        at = np.searchsorted(self.digests, digests).clip(max=len(self.digests) - 1)
        return self.digests[at] == digests

    def __contains__(self, key: str) -> bool:
        return bool(self.contains(source_digests([key]))[0])

    def __len__(self) -> int:
        return len(self.digests)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (set, frozenset)):
            other = SourceSet(source_digests(other))
        if not isinstance(other, SourceSet):
            return NotImplemented
        return bool(np.array_equal(self.digests, other.digests))

    __hash__ = None  # type: ignore[assignment]  # mutable-style value, like set

    def __bool__(self) -> bool:
        return len(self.digests) > 0
