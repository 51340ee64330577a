"""How large tagging's actor pools are and where images are decoded, from the stage
settings and the cluster's resources (plain numbers; ``emotion.pipelines.tagging`` hands
them to Ray Data)."""

from __future__ import annotations

import math
from typing import Mapping

from emotion.settings import ActorStage


def auto_pool_max(stage: ActorStage, num_gpus: float, cluster: Mapping[str, float]) -> int:
    """``pool_max: auto``: the most actors the cluster can keep busy, at least ``pool_min``.

    With a GPU share per actor, as many as the GPUs hold; else one per
    ``torch_threads x concurrent_batches`` cores (an actor without a thread limit uses
    every core of its node, so one). On 2 cores with the local defaults this is 2.
    """
    if num_gpus > 0:
        fits = int(cluster.get("GPU", 0) / num_gpus + 1e-9)
    else:
        cpus = float(cluster.get("CPU", 1))
        cores_per_actor = (stage.torch_threads or cpus) * stage.concurrent_batches
        fits = int(cpus / cores_per_actor + 1e-9)
    return max(stage.pool_min, fits)


def most_batches(images: int, block: int, batch_size: int) -> int:
    """The most batches the first actor stage can be handed for ``images`` in input blocks
    of ``block`` rows: one per block, and Ray Data bundles blocks up to ``batch_size`` rows."""
    return max(1, math.ceil(images / max(block, batch_size)))


def decodes_in_actors(in_actors: bool | str, use_gpu: bool) -> bool:
    """Whether the first actor stage reads and decodes its own batches.

    ``auto``: yes without GPUs. On CPUs decode and the models share the same cores, so
    separate decode tasks add only their worker processes' start-up (each imports Ray
    Data, about 1.5 s of CPU, while the actors load their models) and object-store
    traffic; with a GPU, decode tasks keep the CPUs decoding while the actors run the
    GPU.
    """
    if in_actors == "auto":
        return not use_gpu
    return bool(in_actors)
