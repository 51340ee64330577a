"""Quadruplets formed inside a batch, for QCS (``emotion.models.face.qcs``).

A quadruplet is four row indices ``(a1, a2, b1, b2)``: two images of one class and two
of another. They index rows of the batch the backbone already encoded, so the backbone
runs once per image however many quadruplets there are.

``sample_quadruplets`` is class-balanced: each quadruplet's two classes are drawn
uniformly among the classes that still have an unused pair, not in proportion to how
often they occur, so a rare class pairs up as often as a frequent one while it has images.
Each row is used at most once. The same ``rng`` state gives the same quadruplets.
"""

from __future__ import annotations

import numpy as np


def sample_quadruplets(classes: np.ndarray, rng: np.random.Generator, max_quadruplets: int | None = None) -> np.ndarray:
    """int64 [Q, 4] quadruplets ``(a1, a2, b1, b2)`` of row indices of a batch whose rows
    have class ``classes`` [B]; rows with class < 0 are never used. Q is 0 when fewer than
    two classes have two rows each."""
    classes = np.asarray(classes, dtype=np.int64).reshape(-1)
    pairs: dict[int, list[tuple[int, int]]] = {}
    for c in np.unique(classes[classes >= 0]):
        rows = rng.permutation(np.flatnonzero(classes == c))
        if len(rows) >= 2:
            pairs[int(c)] = [(int(rows[i]), int(rows[i + 1])) for i in range(0, len(rows) - 1, 2)]
    quads: list[tuple[int, int, int, int]] = []
    while max_quadruplets is None or len(quads) < max_quadruplets:
        open_classes = sorted(c for c, left in pairs.items() if left)
        if len(open_classes) < 2:
            break
        first, second = rng.choice(open_classes, size=2, replace=False)
        quads.append(pairs[int(first)].pop() + pairs[int(second)].pop())
    return np.asarray(quads, dtype=np.int64).reshape(-1, 4)
