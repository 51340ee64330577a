"""Statistics of a dataset: class counts per split, people per image, image sizes.

``StatsAccumulator`` takes samples one at a time (so ``prepare_dataset`` can stream),
``compute_stats`` does a whole iterable, ``stats_from_table`` a prepared Arrow table.
The report is a plain JSON-able dict; ``format_stats`` turns it into the text of
``stats.txt`` and ``plot_stats`` into the PNG of ``stats.png``.
"""

from __future__ import annotations

import io
from collections import Counter
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pyarrow as pa

from emotion.data.records import row_to_sample


class StatsAccumulator:
    """Running statistics over samples (see module docstring for the report's form)."""

    def __init__(self, labels: Sequence[str], label_set: str = "") -> None:
        self.labels = tuple(labels)
        self.label_set = label_set
        self._splits: dict[str, dict[str, Any]] = {}
        self.skipped: list[dict[str, str]] = []

    def _split(self, name: str) -> dict[str, Any]:
        if name not in self._splits:
            self._splits[name] = {
                "images": 0,
                "people": 0,
                "class_counts": np.zeros(len(self.labels), dtype=np.int64),
                "people_per_image": Counter(),
                "face_boxes_known": 0,
                "body_boxes_known": 0,
                "sizes": Counter(),
            }
        return self._splits[name]

    def add(self, sample: Mapping[str, Any]) -> None:
        split = self._split(sample["split"])
        labels = np.asarray(sample["labels"], dtype=np.float32).reshape(-1, len(self.labels))
        n = labels.shape[0]
        split["images"] += 1
        split["people"] += n
        split["class_counts"] += (labels > 0.5).sum(axis=0)
        split["people_per_image"][n] += 1
        split["face_boxes_known"] += int((~np.isnan(np.asarray(sample["face_boxes"], np.float32).reshape(-1, 4)[:, 0])).sum())
        split["body_boxes_known"] += int((~np.isnan(np.asarray(sample["person_boxes"], np.float32).reshape(-1, 4)[:, 0])).sum())
        width, height = int(sample.get("width", -1)), int(sample.get("height", -1))
        if width > 0 and height > 0:
            split["sizes"][(width, height)] += 1

    def skip(self, uri: str, reason: str) -> None:
        """Record an image left out (unreadable, missing)."""
        self.skipped.append({"image_uri": uri, "reason": reason})

    def result(self) -> dict[str, Any]:
        splits = {}
        for name, split in self._splits.items():
            sizes = split["sizes"]
            widths = np.repeat([w for w, _ in sizes], list(sizes.values())) if sizes else np.zeros(0)
            heights = np.repeat([h for _, h in sizes], list(sizes.values())) if sizes else np.zeros(0)
            splits[name] = {
                "images": split["images"],
                "people": split["people"],
                "class_counts": {label: int(c) for label, c in zip(self.labels, split["class_counts"])},
                "people_per_image": dict(sorted(split["people_per_image"].items())),
                "face_boxes_known": split["face_boxes_known"],
                "body_boxes_known": split["body_boxes_known"],
                "width": _summary(widths),
                "height": _summary(heights),
                "sizes": {f"{w}x{h}": c for (w, h), c in sizes.most_common()},
            }
        return {
            "label_set": self.label_set,
            "labels": list(self.labels),
            "splits": splits,
            "total": {
                "images": sum(s["images"] for s in splits.values()),
                "people": sum(s["people"] for s in splits.values()),
            },
            "skipped": list(self.skipped),
        }


def _summary(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {"min": -1, "median": -1, "max": -1}
    return {"min": int(values.min()), "median": float(np.median(values)), "max": int(values.max())}


def compute_stats(samples: Iterable[Mapping[str, Any]], labels: Sequence[str], label_set: str = "") -> dict[str, Any]:
    """Statistics report of samples (see ``StatsAccumulator``)."""
    accumulator = StatsAccumulator(labels, label_set)
    for sample in samples:
        accumulator.add(sample)
    return accumulator.result()


def stats_from_table(table: pa.Table, labels: Sequence[str], label_set: str = "") -> dict[str, Any]:
    """Statistics report of a prepared table (image bytes are not touched)."""
    columns = [c for c in table.column_names if c != "image_bytes"]
    rows = table.select(columns).to_pylist()
    return compute_stats((row_to_sample(r, len(labels)) for r in rows), labels, label_set)


def format_stats(stats: Mapping[str, Any], top_sizes: int = 5) -> str:
    """Human-readable report: one block per split."""
    lines = [
        f"label set: {stats.get('label_set') or '?'} ({len(stats['labels'])} classes)",
        f"total: {stats['total']['images']} images, {stats['total']['people']} people",
    ]
    width = max((len(name) for name in stats["labels"]), default=5)
    for name, split in stats["splits"].items():
        lines += [
            "",
            f"[{name}] {split['images']} images, {split['people']} people, "
            f"{split['body_boxes_known']} body boxes, {split['face_boxes_known']} face boxes",
            "  class counts:",
        ]
        lines += [f"    {label:<{width}}  {count}" for label, count in split["class_counts"].items()]
        histogram = ", ".join(f"{n}: {c}" for n, c in split["people_per_image"].items())
        lines.append(f"  people per image: {histogram}")
        w, h = split["width"], split["height"]
        lines.append(f"  width min/median/max: {w['min']}/{w['median']:g}/{w['max']}")
        lines.append(f"  height min/median/max: {h['min']}/{h['median']:g}/{h['max']}")
        common = ", ".join(f"{size} ({count})" for size, count in list(split["sizes"].items())[:top_sizes])
        lines.append(f"  most common sizes: {common or 'unknown'}")
    if stats.get("skipped"):
        lines += ["", f"skipped {len(stats['skipped'])} image(s):"]
        lines += [f"  {s['image_uri']}: {s['reason']}" for s in stats["skipped"][:20]]
    return "\n".join(lines) + "\n"


def plot_stats(stats: Mapping[str, Any]) -> bytes:
    """PNG bytes: class counts per split, people per image, image sizes."""
    import matplotlib

    matplotlib.use("Agg")  # no display: render to memory only
    import matplotlib.pyplot as plt

    splits = list(stats["splits"].items())
    labels = stats["labels"]
    fig, axes = plt.subplots(1, 3, figsize=(max(12, 0.45 * len(labels) + 8), 4.5))
    bar_width = 0.8 / max(1, len(splits))
    x = np.arange(len(labels))
    for i, (name, split) in enumerate(splits):
        axes[0].bar(x + i * bar_width, [split["class_counts"][label] for label in labels], bar_width, label=name)
        people = split["people_per_image"]
        axes[1].bar(np.array(list(people.keys()), dtype=float) + i * bar_width, list(people.values()), bar_width, label=name)
        sizes = [(tuple(map(int, key.split("x"))), count) for key, count in split["sizes"].items()]
        if sizes:
            most = max(c for _, c in sizes)
            areas = [12 + 150 * np.sqrt(c / most) for _, c in sizes]  # area grows with the count
            axes[2].scatter([w for (w, _), _ in sizes], [h for (_, h), _ in sizes], s=areas, alpha=0.5, label=name)
    axes[0].set_xticks(x + 0.4 - bar_width / 2, labels, rotation=60, ha="right", fontsize=8)
    axes[0].set_title("people per class")
    counts = sorted({int(n) for _, split in splits for n in split["people_per_image"]})
    axes[1].set_xticks(np.array(counts) + 0.4 - bar_width / 2, [str(n) for n in counts])
    axes[1].set_title("images by number of people")
    axes[1].set_xlabel("people in the image")
    axes[2].set_title("image sizes")
    axes[2].set_xlabel("width (px)")
    axes[2].set_ylabel("height (px)")
    for ax in axes:
        if splits:
            ax.legend(fontsize=8, markerscale=0.5)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()
