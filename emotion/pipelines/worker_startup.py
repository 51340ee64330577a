"""Start-up of a long-lived worker process that loads its models once (a tagging actor,
a Serve replica): its torch thread count and how it loads."""

from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def loading_models() -> Iterator[None]:
    """Pause the cyclic garbage collector while the process imports torch and builds its
    models, then freeze what was loaded.

    Once torch is imported and the models built, the process holds about 300,000 objects
    that live as long as it does. With the collector on, its full passes over them while
    they are being created cost about a fifth of an actor's start-up CPU (0.5-0.6 s of
    ~3 s on the 2-core machine, benchmarks/README.md); frozen, later full passes skip
    them too. Both are pure CPU: on a small machine an actor's start-up competes with the
    other actors'.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
        # Only objects made before this point and still alive: the modules and models,
        # kept for the process's life anyway.
        gc.freeze()
    finally:
        if was_enabled:
            gc.enable()


def limit_torch_threads(n: int | None) -> None:
    """Bound torch's intra-op threads to ``n`` (None: torch's default, every core): workers
    share their node's cores with each other. Imports torch, so call it inside
    ``loading_models``."""
    if n:
        import torch

        torch.set_num_threads(int(n))
