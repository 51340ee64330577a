"""What a tagging job tells a user while it runs: counts taken on the driver from the rows
as they come out, a progress line every few seconds, and a warning naming the files in
flight when nothing has come out for a while."""

from __future__ import annotations

import threading
import time
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from emotion.schema import first_row_mask, has_error
from emotion.tagging.units import DETECT_NODE, UnitWriter


class JobReports(Protocol):
    """What the job's tasks and actors have posted (``emotion.pipelines.job_board.JobBoard``)."""

    def listing(self) -> dict[str, Any]: ...

    def in_flight(self) -> list[str]: ...


class PipelineCounts:
    """What has come out of the pipeline so far, counted on the driver from the rows
    themselves: feeds the progress line and the summary's per-node figures.

    Each image's first row (``person_index`` 0, or null for an image with nobody in it
    or an error) counts the image once, even when its rows arrive in several batches.
    """

    def __init__(self) -> None:
        self.images = 0
        self.people = 0
        self.errors = 0
        self.images_by_node: dict[str, int] = {}

    def add(self, table: pa.Table) -> None:
        person = table.column("person_index").to_numpy(zero_copy_only=False)
        errors = table.column("error").to_pylist()
        first_rows = np.flatnonzero(first_row_mask(table)).tolist()
        self.images += len(first_rows)
        self.people += int((person >= 0).sum())
        self.errors += sum(has_error(errors[i]) for i in first_rows)
        nodes = table.column(DETECT_NODE).to_pylist()
        for i in first_rows:
            self.images_by_node[nodes[i]] = self.images_by_node.get(nodes[i], 0) + 1


class ProgressPrinter:
    """Prints one progress line every ``every_s`` seconds while the pipeline runs, and a
    warning naming the files in flight when no row has come out for ``stall_warn_s``.

    ``images``: the images to tag when known up front (a small input); else the listing
    tasks' counts on the job's ``board`` say how far listing has got (``listing_tasks``
    tasks in all, over ``listing_total`` entries when the input says so).
    """

    def __init__(self, counts: PipelineCounts, writer: UnitWriter, board: JobReports, *, images: int | None,
                 listing_tasks: int, listing_total: int | None, every_s: float, stall_warn_s: float):
        self.counts, self.writer, self.board = counts, writer, board
        self.images, self.listing_tasks, self.listing_total = images, listing_tasks, listing_total
        self.every_s, self.stall_warn_s = every_s, stall_warn_s
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="tag-progress", daemon=True)
        self.started = time.perf_counter()

    def line(self) -> str:
        counts, stats = self.counts, self.writer.stats
        elapsed = time.perf_counter() - self.started
        rate = counts.images / elapsed if elapsed > 0 else 0.0
        to_tag = self.images
        parts = []
        if self.images is None:
            listing = self.board.listing()
            finished = listing["finished"] >= self.listing_tasks
            total = "" if self.listing_total is None else f"/{self.listing_total}"
            parts.append(f"listed {listing['listed']}{total}{'' if finished else ' so far'} "
                         f"({listing['skipped']} already tagged)")
            if finished:
                to_tag = listing["listed"] - listing["skipped"]
            elif self.listing_total is not None:
                to_tag = self.listing_total - listing["skipped"]
        done = f"{counts.images}/{to_tag}" if to_tag is not None else f"{counts.images}"
        parts.append(f"{done} images tagged, {stats.images} committed ({len(stats.units)} files), "
                     f"{counts.people} people, {counts.errors} errors, {rate:.1f} images/s")
        if to_tag is not None and rate > 0:
            parts.append(f"eta {_duration(max(0, to_tag - counts.images) / rate)}")
        else:
            parts.append("eta: listing")
        return "[tag] " + "; ".join(parts)

    def stalled_line(self, seconds: float) -> str:
        files = self.board.in_flight()
        shown = ", ".join(files[:5]) + (f" and {len(files) - 5} more" if len(files) > 5 else "")
        where = f"in flight: {shown}" if files else "no batch has been running that long (listing or start-up)"
        return f"[tag] no image finished in the last {seconds:.0f} s; {where}"

    def _loop(self) -> None:
        last_line = last_row = last_warning = time.perf_counter()
        images = -1
        tick = min(x for x in (self.every_s, self.stall_warn_s / 4, 1.0) if x > 0)
        while not self.stop.wait(tick):
            now = time.perf_counter()
            if self.counts.images != images:
                images, last_row = self.counts.images, now
            if self.every_s > 0 and now - last_line >= self.every_s:
                print(self.line(), flush=True)
                last_line = now
            if self.stall_warn_s > 0 and now - last_row >= self.stall_warn_s and now - last_warning >= self.stall_warn_s:
                print(self.stalled_line(now - last_row), flush=True)
                last_warning = now

    def __enter__(self) -> "ProgressPrinter":
        if self.every_s > 0 or self.stall_warn_s > 0:
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
