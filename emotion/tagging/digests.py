"""Images remembered by digest: a 16-byte BLAKE2b hash per source, kept sorted, so a job
over millions of images holds megabytes where sets of paths would take gigabytes.
``ResumeSets`` are what the output already holds, as the input's listing filters it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from hashlib import blake2b
from typing import Iterable, Sequence

import numpy as np


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


@dataclass(frozen=True)
class ResumeSets:
    """What the output already holds: ``done`` images are skipped unless ``retry`` holds
    them too (``retry_errors``). Sorted digests (``SourceSet``)."""

    done: np.ndarray
    retry: np.ndarray

    def todo(self, entries: Sequence[tuple[str, int]]) -> tuple[list[tuple[str, int]], int]:
        """(the entries to tag, how many of them are retried earlier errors)."""
        if not len(self.done):
            return list(entries), 0
        digests = source_digests([path for path, _ in entries])
        done = SourceSet(self.done, sorted_unique=True).contains(digests)
        retry = SourceSet(self.retry, sorted_unique=True).contains(digests)
        keep = ~done | retry
        return [e for e, k in zip(entries, keep) if k], int(retry.sum())
