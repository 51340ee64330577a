"""How the job entry points end on a user's mistake: one log line and exit status 2.

A missing input, an unknown key or a bad value is reported by its message alone (it
names the path or the key); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Iterator

USER_ERRORS: tuple[type[BaseException], ...] = (FileNotFoundError, KeyError, ValueError)


@contextlib.contextmanager
def exit_on_user_error(log: logging.Logger, errors: tuple[type[BaseException], ...] = USER_ERRORS) -> Iterator[None]:
    """Turn ``errors`` raised inside the block into ``log.error(message)`` and ``sys.exit(2)``."""
    try:
        yield
    except errors as exc:
        log.error("%s", exc)
        sys.exit(2)
