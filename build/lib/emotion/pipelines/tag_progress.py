"""The tagging job's progress counter, an actor of its own module.

A Ray actor's process imports the module that defines its class. This module needs only
Ray core, so the counter's process starts in about half a second instead of importing
Ray Data and the pipeline (about 2 s of CPU, taken from the actors loading their models
on a small machine).
"""

from __future__ import annotations

from typing import Any

import ray


@ray.remote(num_cpus=0)
class TagProgress:
    """Counts what the detect actors did, per node: feeds the live progress line and the
    summary's per-node figures. Reports are fire-and-forget, so they never slow a stage."""

    def __init__(self) -> None:
        self.images = 0
        self.people = 0
        self.errors = 0
        self.images_by_node: dict[str, int] = {}

    def report(self, node_id: str, images: int, people: int, errors: int) -> None:
        self.images += images
        self.people += people
        self.errors += errors
        self.images_by_node[node_id] = self.images_by_node.get(node_id, 0) + images

    def snapshot(self) -> dict[str, Any]:
        return {"images": self.images, "people": self.people, "errors": self.errors,
                "images_by_node": dict(self.images_by_node)}
