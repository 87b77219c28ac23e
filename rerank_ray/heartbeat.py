"""A heartbeat for long stages: when a stage makes no progress for a while, the log says where
it is waiting, so a hang is never silent.

    with heartbeat("training quickstart", waiting_on="Ray Train workers (ray status)") as beat:
        for step in steps:
            ...
            beat()          # progress: the quiet period restarts

A daemon thread logs one INFO line per quiet period of ``every_s`` seconds (default
``$RERANK_RAY_HEARTBEAT_S``, else 300) and stops when the block exits. A stage that cannot
report progress (a blocking ``trainer.fit()``) logs one line per period: how long it has run,
and what it is waiting on.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("rerank_ray.heartbeat")


def default_every_s() -> float:
    return float(os.environ.get("RERANK_RAY_HEARTBEAT_S", "300"))


class Heartbeat:
    """Call it to record progress; between calls a thread reports each quiet ``every_s``."""

    def __init__(self, stage: str, every_s: float, waiting_on: str) -> None:
        self.stage, self.every_s, self.waiting_on = stage, every_s, waiting_on
        self.started = self.last = time.monotonic()
        self.warnings = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"heartbeat:{stage}", daemon=True)

    def __call__(self) -> None:
        self.last = time.monotonic()

    def _watch(self) -> None:
        while not self._stop.wait(min(self.every_s, 5.0)):
            now = time.monotonic()
            if now - self.last >= self.every_s:
                self.warnings += 1
                log.info(
                    "%s: no progress reported for %.0f s (%.0f s in this stage); waiting on %s",
                    self.stage, now - self.last, now - self.started, self.waiting_on,
                )  # fmt: skip
                self.last = now


@contextmanager
def heartbeat(stage: str, *, waiting_on: str, every_s: float | None = None) -> Iterator[Heartbeat]:
    """Run the block with a heartbeat; `waiting_on` names what a quiet stage is waiting for."""
    beat = Heartbeat(stage, default_every_s() if every_s is None else every_s, waiting_on)
    beat._thread.start()
    try:
        yield beat
    finally:
        beat._stop.set()
        beat._thread.join()
