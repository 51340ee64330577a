"""The C allocator of a process that runs models: keep freed memory instead of handing it
back to the operating system after every batch.

Every batch of inference or training allocates its tensors afresh (a detector's canvas,
crops, activations), frees them, and allocates the same sizes again for the next batch.
glibc's malloc serves blocks above its mmap threshold with their own ``mmap`` and returns
free memory at the top of the heap with ``brk`` once more than the trim threshold is free,
so each batch maps pages again and takes a page fault on every one of them: on the 2-core
machine ``emotion eval`` spent as much system time as user time. With the thresholds
raised the heap keeps what it held, and the next batch reuses it: ``emotion eval`` reads
1.5-2.8x the faces per second, training steps 1.15-1.36x and the ``emotion tag`` pipeline
1.18x the images (benchmarks/README.md, "The allocator").

It is set where a process commits to running batches: ``emotion.predictor.build_predictor``
(tagging actors, Serve replicas, eval, the Python API), ``emotion eval`` on a dataset's own
boxes, the Ray Data tasks that decode images (tagging's, training rows') and Ray Train's
workers. A job's driver, which runs no batches, keeps glibc's settings.

The price is memory: a process keeps its peak heap (about 100 MB more resident memory in
that run). ``EMOTION_MALLOC=system`` leaves glibc's defaults, and so do processes where
the user set glibc's own ``MALLOC_*`` variables or a ``glibc.malloc.*`` tunable in
``GLIBC_TUNABLES`` (theirs win; tunables of other parts of glibc do not count). Other C
libraries (musl, macOS) are left as they are.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3

INT_MAX = 2**31 - 1
TOP_PAD_BYTES = 256 << 20  # extra heap asked of the system each time it grows
SWITCH = "EMOTION_MALLOC"  # "system": leave the allocator as glibc sets it
_USER_SETTINGS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_MMAP_MAX_")
_USER_TUNABLES = "glibc.malloc."  # GLIBC_TUNABLES is name=value pairs joined by ':'

_applied: bool | None = None  # once per process


def retain_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds and its top pad in this process (module
    doc). Returns whether they are set; repeated calls do nothing more."""
    global _applied
    if _applied is None:
        _applied = _apply()
    return _applied


def _apply() -> bool:
    if os.environ.get(SWITCH, "").lower() == "system" or _user_set_malloc():
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc: nothing to tune
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return all([mallopt(M_MMAP_THRESHOLD, INT_MAX) == 1, mallopt(M_TRIM_THRESHOLD, INT_MAX) == 1,
                mallopt(M_TOP_PAD, TOP_PAD_BYTES) == 1])


def _user_set_malloc() -> bool:
    """Whether the environment holds the user's own settings for glibc's malloc."""
    tunables = os.environ.get("GLIBC_TUNABLES", "").split(":")
    return any(name in os.environ for name in _USER_SETTINGS) or any(t.startswith(_USER_TUNABLES) for t in tunables)
