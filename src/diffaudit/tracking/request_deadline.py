"""A served request's deadline, checked by the model between denoising steps.

MLflow's scoring server answers 504 at its timeout but cannot stop the thread that runs `predict`, so a
long request went on computing for minutes after its answer, and a stopping server waited for it. The
serving app sets the deadline per request (a context variable: it follows the request into MLflow's
worker thread) and raises the shutdown flag on SIGTERM; the model calls `check()` and gives up.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_DEADLINE: ContextVar[float | None] = ContextVar("diffaudit_request_deadline", default=None)
SHUTTING_DOWN = threading.Event()  # set once, when the server is told to stop


class RequestStopped(Exception):
    """The request ran past its deadline, or the server is stopping: its work is abandoned."""

    def __init__(self, why: str, shutting_down: bool) -> None:
        super().__init__(why)
        self.shutting_down = shutting_down


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Every `check()` under this context (its threads included) fails `seconds` from now."""
    token = _DEADLINE.set(time.monotonic() + seconds)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def check() -> None:
    """Raise `RequestStopped` if the server is stopping or this request's deadline has passed; outside a
    served request (no deadline set, server running) it does nothing."""
    if SHUTTING_DOWN.is_set():
        raise RequestStopped("the server is shutting down", shutting_down=True)
    end = _DEADLINE.get()
    if end is not None and time.monotonic() > end:
        raise RequestStopped("the request ran past the server's timeout", shutting_down=False)
