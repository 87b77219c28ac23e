"""The study's console: one line per trial state change, with a live count and the time left.

:class:`Progress` is pure bookkeeping (trial started, done with its headline metric, failed
with its one-line error -> the line to print), so it is unit-tested without Ray;
:func:`tune_callback` wraps it in a Ray Tune ``Callback`` the study's Tuner calls on the
driver. The time left is the dry run's forecast (``study/forecast.py``) of what has not finished
(a running trial's forecast less its elapsed time), spread over the trials that run at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rerank_ray.console import format_duration, one_line

log = logging.getLogger("rerank_ray.study")


@dataclass
class Progress:
    """Trial states of one Tune grid. `walls`: each trial's forecast wall seconds (may miss
    some); `concurrency`: trials at a time; `headline`: the metric key a done trial shows,
    `label` how it reads (``dl19 nDCG@10``)."""

    names: list[str]
    walls: dict[str, float]
    concurrency: int
    headline: str
    label: str
    clock: Callable[[], float] = time.monotonic
    started: dict[str, float] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)

    def start(self, name: str) -> str:
        self.started.setdefault(name, self.clock())
        return self._line(name, "started")

    def finish(self, name: str, result: dict[str, Any] | None) -> str:
        self.done.add(name)
        value = (result or {}).get(self.headline)
        shown = f"{self.label} {value:.3f}" if isinstance(value, int | float) else "no headline metric"
        return self._line(name, f"done: {shown}")

    def fail(self, name: str, error: str) -> str:
        self.failed.add(name)
        return self._line(name, f"failed: {one_line(error, limit=200)}")

    def left_s(self) -> float | None:
        """Forecast seconds until the grid ends; None without a forecast for every open trial."""
        now, total = self.clock(), 0.0
        for name in self.names:
            if name in self.done or name in self.failed:
                continue
            if name not in self.walls:
                return None
            total += (
                max(0.0, self.walls[name] - (now - self.started[name]))
                if name in self.started
                else self.walls[name]
            )
        return total / max(1, min(self.concurrency, len(self.names)))

    def _line(self, name: str, what: str) -> str:
        running = len(set(self.started) - self.done - self.failed)
        counts = f"{len(self.done)} done, {running} running, {len(self.failed)} failed of {len(self.names)}"
        left = self.left_s()
        return (
            f"trial {name} {what} [{counts}"
            + (f"; ~{format_duration(left)} left" if left is not None else "")
            + "]"
        )


def tune_callback(progress: Progress) -> Any:
    """A Ray Tune ``Callback`` that logs `progress`'s line at each trial state change."""
    from ray import tune

    class TrialLines(tune.Callback):
        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            log.info(progress.start(_name(trial)))

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            log.info(progress.finish(_name(trial), trial.last_result))

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            log.info(progress.fail(_name(trial), _error(trial)))

    return TrialLines()


def _name(trial: Any) -> str:
    return str(trial.config["trial"]["name"])


def _error(trial: Any) -> str:
    """The trial's error, its last line (the exception itself, not Ray's traceback)."""
    try:
        err = trial.get_pickled_error() or trial.get_error()
    except Exception:  # the error file is not readable: say so, the report has the rest
        err = None
    if err is None:
        return "see the report"
    from rerank_ray.console import explain

    return explain(err).error
