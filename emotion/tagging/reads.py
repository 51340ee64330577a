"""Reading an input image's bytes so that no file can stop or hang a job: a failure is
that image's error, and a read past its deadline is abandoned to its thread."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from emotion import storage


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
