"""What a tagging job's tasks and actors tell its driver, without an extra process.

A few keys per job in Ray's internal key-value store (it lives in the GCS, which every
Ray process already talks to): each listing task's counts (listed, already tagged,
retried) and, from a model actor whose batch has been running longer than
``stall_warn_s``, the files of that batch. The driver reads them for its progress line.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Optional

from ray.experimental import internal_kv

KV_NAMESPACE = "emotion-tag"


class JobBoard:
    """One job's keys in Ray's internal key-value store (module doc). Writes never fail
    the job: the board only feeds progress lines."""

    def __init__(self, run_id: str):
        self.prefix = f"{run_id}:"

    def put_listing(self, task: int, counts: dict[str, Any]) -> None:
        self._put(f"{self.prefix}listing:{task:06d}", counts)

    def put_in_flight(self, actor: str, sources: Optional[list[str]]) -> None:
        key = f"{self.prefix}in-flight:{actor}"
        if sources is None:
            _quietly(internal_kv._internal_kv_del, key, namespace=KV_NAMESPACE)
        else:
            self._put(key, {"sources": sources, "since": time.time()})

    def listing(self) -> dict[str, Any]:
        """The listing tasks' counts added up, and whether every task that reported has
        finished (``tasks``: how many reported)."""
        values = self._values("listing:")
        return {"listed": sum(v["listed"] for v in values), "skipped": sum(v["skipped"] for v in values),
                "retried": sum(v["retried"] for v in values), "tasks": len(values),
                "finished": sum(bool(v["finished"]) for v in values)}

    def in_flight(self) -> list[str]:
        """The files of every batch that an actor reports as stalled."""
        return [source for value in self._values("in-flight:") for source in value["sources"]]

    def clear(self) -> None:
        for key in _quietly(internal_kv._internal_kv_list, self.prefix, namespace=KV_NAMESPACE) or []:
            _quietly(internal_kv._internal_kv_del, key, namespace=KV_NAMESPACE)

    def _put(self, key: str, value: dict[str, Any]) -> None:
        _quietly(internal_kv._internal_kv_put, key, json.dumps(value), overwrite=True, namespace=KV_NAMESPACE)

    def _values(self, kind: str) -> list[dict[str, Any]]:
        keys = _quietly(internal_kv._internal_kv_list, self.prefix + kind, namespace=KV_NAMESPACE) or []
        if not keys:
            return []
        from ray._private.worker import global_worker

        found = _quietly(global_worker.gcs_client.internal_kv_multi_get, keys, KV_NAMESPACE.encode()) or {}
        return [json.loads(value) for value in found.values() if value]


def _quietly(call, *args, **kwargs):
    try:
        return call(*args, **kwargs)
    except Exception:  # noqa: BLE001 - progress reports must never fail the job
        return None


class StallWatch:
    """In a model actor: when the batch it runs has been running for ``stall_warn_s``,
    put its files on the job's board (``JobBoard.in_flight``); take them off when it ends."""

    def __init__(self, run_id: Optional[str], stall_warn_s: float, actor: str):
        self.board = JobBoard(run_id) if run_id else None
        self.stall_warn_s, self.actor = stall_warn_s, actor
        self.lock = threading.Lock()
        self.batches: dict[int, tuple[float, list[str]]] = {}  # thread -> (started, sources)
        self.posted = False
        if self.board is not None and stall_warn_s > 0:
            threading.Thread(target=self._watch, name="stall-watch", daemon=True).start()

    def start(self, sources: list[str]) -> None:
        with self.lock:
            self.batches[threading.get_ident()] = (time.monotonic(), sources)

    def end(self) -> None:
        with self.lock:
            self.batches.pop(threading.get_ident(), None)

    def _watch(self) -> None:
        while True:
            time.sleep(min(1.0, self.stall_warn_s / 4))
            now = time.monotonic()
            with self.lock:
                stalled = [s for started, sources in self.batches.values()
                           if now - started >= self.stall_warn_s for s in sources]
            if stalled:
                self.board.put_in_flight(self.actor, stalled)
                self.posted = True
            elif self.posted:
                self.board.put_in_flight(self.actor, None)
                self.posted = False
