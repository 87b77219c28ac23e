"""The study console's trial lines: state changes, counts and the forecast time left."""

from __future__ import annotations

from rerank_ray.study.progress import Progress


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_each_state_change_is_one_line_with_the_counts_and_the_time_left():
    clock = Clock()
    p = Progress(
        ["a", "b", "c"], {"a": 600.0, "b": 600.0, "c": 300.0}, 2, "dl19/nDCG_10", "dl19 nDCG@10", clock
    )
    # Nothing started: 1500 s of forecast over 2 at a time.
    assert p.start("a") == "trial a started [0 done, 1 running, 0 failed of 3; ~12m30s left]"
    clock.now = 120.0  # a has 480 s left; b and c 900 s: 1380 / 2
    assert p.start("b") == "trial b started [0 done, 2 running, 0 failed of 3; ~11m30s left]"
    clock.now = 600.0
    assert p.finish("a", {"dl19/nDCG_10": 0.54521, "loss": 1.0}) == (
        "trial a done: dl19 nDCG@10 0.545 [1 done, 1 running, 0 failed of 3; ~3m30s left]"
    )  # b: 600 - 480 s run = 120 s, c: 300 s; 420 / 2
    # c alone: 300 / 2 (the forecast spreads what is left over the trials that run at once).
    assert p.fail("b", "boom\nValueError: model.max_length=64 exceeds 16") == (
        "trial b failed: boom: ValueError: model.max_length=64 exceeds 16 [1 done, 0 running, 1 failed of 3; ~2m30s left]"
    )
    assert (
        p.finish("c", {}) == "trial c done: no headline metric [2 done, 0 running, 1 failed of 3; ~0.0s left]"
    )


def test_without_a_forecast_for_an_open_trial_no_time_is_promised():
    p = Progress(["a", "b"], {"a": 10.0}, 1, "m", "m")
    assert p.start("a").endswith("[0 done, 1 running, 0 failed of 2]")
