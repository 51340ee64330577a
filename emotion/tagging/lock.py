"""One writer per tagging output: the run marker ``<output>/_LOCK.json``.

``OutputLock`` keeps the marker (host, pid, heartbeat) in the output and refuses a second
run while the first is alive. A marker left by a killed run is taken over: at once if its
process is gone from this host, else once its heartbeat is older than ``stale_s``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid

from emotion import storage

log = logging.getLogger(__name__)

LOCK_NAME = "_LOCK.json"


class OutputLockedError(RuntimeError):
    """Another live run holds the output."""


def _process_start(pid: int) -> str | None:
    """When a local process started ("?" where the OS does not say), or None if it is
    gone. Comparing start times guards against a pid reused by another process."""
    if os.path.isdir("/proc"):
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                return f.read().rsplit(b")", 1)[1].split()[19].decode()
        except (OSError, IndexError):
            return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return "?"


class OutputLock:
    """The run marker ``<output>/_LOCK.json`` (module doc)."""

    def __init__(self, output: str, *, break_lock: bool = False, stale_s: float = 120.0,
                 heartbeat_s: float = 30.0):
        self.uri = storage.join(output.rstrip("/"), LOCK_NAME)
        self.output, self.break_lock = output, break_lock
        self.stale_s, self.heartbeat_s = stale_s, heartbeat_s
        self.run_id = uuid.uuid4().hex
        self.started = time.time()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _marker(self) -> bytes:
        pid = os.getpid()
        return json.dumps({"run_id": self.run_id, "host": socket.gethostname(), "pid": pid,
                           "pid_start": _process_start(pid), "started": self.started,
                           "heartbeat": time.time()}).encode()

    def _holder(self) -> dict | None:
        try:
            return json.loads(storage.read_bytes(self.uri))
        except FileNotFoundError:
            return None
        except (ValueError, OSError):
            return {}  # unreadable marker: a killed write; treat as stale

    def _is_alive(self, holder: dict) -> bool:
        if not holder:
            return False
        if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
            start = _process_start(holder["pid"])
            return start is not None and start in (holder.get("pid_start"), "?")
        return time.time() - float(holder.get("heartbeat", 0)) < self.stale_s

    def acquire(self) -> "OutputLock":
        if storage.create_exclusive(self.uri, self._marker()):
            return self._confirm()
        holder = self._holder()
        if holder is not None and self._is_alive(holder) and not self.break_lock:
            age = time.time() - float(holder.get("heartbeat", 0))
            raise OutputLockedError(
                f"output {self.output} is being written by another run (host {holder.get('host')}, pid "
                f"{holder.get('pid')}, last heartbeat {age:.0f} s ago); wait for it to finish, choose another "
                "output, or pass break_lock=true if that run is dead")
        log.warning("taking over the lock of %s from a run that is gone (%s)", self.output,
                    {k: holder.get(k) for k in ("host", "pid", "run_id")} if holder else "unreadable marker")
        storage.write_bytes(self.uri, self._marker())
        return self._confirm()

    def _confirm(self) -> "OutputLock":
        # Two runs taking over one stale lock at once: the last write wins, the other stops.
        holder = self._holder()
        if not holder or holder.get("run_id") != self.run_id:
            raise OutputLockedError(f"output {self.output} was locked by another run starting at the same time")
        self._thread = threading.Thread(target=self._beat, name="output-lock-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                storage.write_bytes(self.uri, self._marker())
            except Exception as exc:  # noqa: BLE001 - a missed heartbeat must not stop the job
                log.warning("could not refresh the output lock %s: %s", self.uri, exc)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        holder = self._holder()
        if holder and holder.get("run_id") == self.run_id:
            storage.delete(self.uri)

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
