"""How a verb stops when it is told to: `ray job stop` (SIGTERM to the driver, then SIGKILL 3 s
later), a scheduler's SIGTERM, or Ctrl-C.

:func:`stop_on_sigterm` (held by the CLI around a verb) turns SIGTERM into :class:`Stopped`, a
``BaseException`` like ``KeyboardInterrupt``, so the verb unwinds past every ``except
Exception`` (Ray Tune's included) instead of dying mid-write. Because SIGKILL follows within
seconds, what must happen before the process ends is registered with :func:`on_stop` and runs
in the signal handler itself, first: a study marks its MLflow run KILLED there
(``study/tracking.study_run``). ``ray.init`` installs its own SIGTERM handler (``sys.exit``), so
``ray_runtime.start_ray`` calls :func:`reclaim_sigterm` after it. What finished is on disk already (every write is atomic,
``io.py``), and the same command resumes.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger("rerank_ray")

_ON_STOP: list[Callable[[str], None]] = []
_HANDLERS: list[Callable[[int, object], None]] = []  # the stop handler, while stop_on_sigterm holds
_RECEIVED: list[str] = []  # the stop signal received within the current stop_on_sigterm block


class Stopped(BaseException):
    """The process was told to stop (the signal's name); unwinds like ``KeyboardInterrupt``."""


@contextmanager
def stop_on_sigterm(announce: Callable[[str], None] | None = None) -> Iterator[None]:
    """Within the block (main thread only), SIGTERM calls `announce(signal name)` first (the
    user's line must be out before SIGKILL, which may come while Ray shuts down), then the
    :func:`on_stop` callbacks, newest first, then raises :class:`Stopped`; the previous handler
    is restored after."""

    def handler(signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        _RECEIVED.append(name)
        if announce is not None:
            announce(name)
        for callback in reversed(_ON_STOP):
            try:
                callback(name)
            except Exception:  # one failed mark must not keep the others, or the stop, from happening
                log.exception("while stopping on %s", name)
        raise Stopped(name)

    previous = signal.signal(signal.SIGTERM, handler)
    _HANDLERS.append(handler)
    _RECEIVED.clear()
    try:
        yield
    finally:
        _HANDLERS.remove(handler)
        signal.signal(signal.SIGTERM, previous)


def stop_reason(exc: BaseException) -> str | None:
    """Why `exc` ended a verb when it is a stop ("SIGTERM", "KeyboardInterrupt"), else None.

    A stop raised inside Ray's Cython code comes out as another error (``SystemError: ...
    returned a result with an exception set``, caused by :class:`Stopped`): any error after a
    stop signal was received counts as the stop."""
    if isinstance(exc, Stopped):
        return str(exc)
    if isinstance(exc, KeyboardInterrupt):
        return "KeyboardInterrupt"
    return _RECEIVED[-1] if _RECEIVED else None


def reclaim_sigterm() -> None:
    """Put the stop handler back after a library replaced it: ``ray.init`` sets SIGTERM to
    ``sys.exit``, which would skip the stop callbacks and end the study's MLflow run FAILED."""
    if _HANDLERS and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _HANDLERS[-1])


@contextmanager
def on_stop(callback: Callable[[str], None]) -> Iterator[None]:
    """Run `callback(signal name)` if the process is stopped while the block runs."""
    _ON_STOP.append(callback)
    try:
        yield
    finally:
        _ON_STOP.remove(callback)
