"""``emotion.allocator``: a process that runs batches keeps freed memory for the next
batch, unless the user asks for glibc's own settings. Each case runs in a fresh process,
since the setting is per process and set once."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import pytest

from tests.conftest import PROJECT_ROOT

# Allocate 64 MiB, free it, then print whether the setting was applied and how many MiB of
# free memory the heap kept (glibc's mallinfo2).
PROBE = """
import ctypes
from emotion.allocator import retain_freed_memory
applied = retain_freed_memory()
libc = ctypes.CDLL("libc.so.6")
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
block = libc.malloc(64 << 20)
ctypes.memset(block, 1, 64 << 20)
libc.free(block)
print(applied, libc.mallinfo2().fordblks >> 20)
"""


def _glibc_with_mallinfo2() -> bool:
    try:
        return hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2")
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not _glibc_with_mallinfo2(), reason="needs glibc 2.33 or later")


def probe(**env: str) -> tuple[bool, int]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES", "EMOTION_MALLOC"))}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env}, cwd=PROJECT_ROOT, capture_output=True,
                         text=True, timeout=60, check=True).stdout.split()
    return out[0] == "True", int(out[1])


def test_freed_memory_stays_in_the_process_for_the_next_batch():
    applied, kept_mib = probe()
    assert applied and kept_mib >= 64


@pytest.mark.parametrize("env", [{"EMOTION_MALLOC": "system"}, {"MALLOC_TOP_PAD_": "131072"},
                                 {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=131072"}],
                         ids=["EMOTION_MALLOC=system", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES"])
def test_the_switch_or_the_users_own_malloc_settings_leave_glibc_as_it_is(env):
    applied, kept_mib = probe(**env)
    assert not applied and kept_mib < 64


def test_tunables_of_other_parts_of_glibc_leave_the_setting_on():
    applied, kept_mib = probe(GLIBC_TUNABLES="glibc.rtld.nns=4:glibc.malloc.top_pad=131072")
    assert not applied and kept_mib < 64  # a malloc tunable among others: the user's settings win
    applied, kept_mib = probe(GLIBC_TUNABLES="glibc.rtld.nns=4")
    assert applied and kept_mib >= 64
