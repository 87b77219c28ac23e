"""Paired tests, bootstrap intervals and Holm's correction on cases with hand-computed answers."""

from __future__ import annotations

import numpy as np
import pytest

from rerank_ray.study.stats import bootstrap_interval, holm, paired_randomization_test, paired_t_test


def test_randomization_exact_when_every_query_improves():
    # 10 equal positive differences: only the all-plus and all-minus sign vectors reach
    # |mean| >= observed, so p = 2 / 2^10 exactly.
    assert paired_randomization_test([0.6] * 10, [0.5] * 10) == pytest.approx(2 / 1024)


def test_randomization_exact_small_case_by_hand():
    # d = (1, 2, 3): |sum| >= 6 only for (+,+,+) and (-,-,-) -> p = 2/8.
    assert paired_randomization_test([1, 2, 3], [0, 0, 0]) == pytest.approx(0.25)
    # d = (1, -1): both sign vectors that keep |sum| >= 0 count -> p = 1.
    assert paired_randomization_test([1, 0], [0, 1]) == pytest.approx(1.0)


def test_randomization_monte_carlo_agrees_with_a_clear_effect():
    a = [0.5 + 0.01 * (i % 5) for i in range(40)]
    b = [x - 0.05 for x in a]
    p = paired_randomization_test(a, b, permutations=2000, seed=1)
    # Every flip but the identity lowers |mean|, so only the +1 correction remains (up to the
    # all-minus draw, which 2000 draws practically never hit).
    assert p == pytest.approx(1 / 2001, abs=2 / 2001)
    assert paired_randomization_test(a, a) == 1.0


def test_paired_t_test_known_value():
    # d = 1..5: mean 3, sd sqrt(2.5), t = 3 / (sqrt(2.5)/sqrt(5)) = 4.2426 on 4 df -> p = 0.01324.
    p = paired_t_test([1, 2, 3, 4, 5], [0, 0, 0, 0, 0])
    assert p == pytest.approx(0.013236, abs=1e-5)
    assert paired_t_test([0.3, 0.4], [0.3, 0.4]) == 1.0


def test_holm_by_hand():
    # m = 4, sorted p = 0.01, 0.02, 0.03, 0.04 -> 4*0.01 = 0.04, 3*0.02 = 0.06, 2*0.03 = 0.06,
    # 1*0.04 = 0.04 -> running max 0.04, 0.06, 0.06, 0.06; returned in input order.
    assert holm([0.03, 0.01, 0.04, 0.02]) == pytest.approx([0.06, 0.04, 0.06, 0.06])
    # Capped at 1; a single p-value is unchanged.
    assert holm([0.5, 0.4]) == pytest.approx([0.8, 0.8])
    assert holm([0.3]) == pytest.approx([0.3])
    assert holm([]) == []
    with pytest.raises(ValueError, match="p-values in"):
        holm([1.5])


def test_holm_rejects_exactly_what_the_step_down_procedure_rejects():
    # alpha 0.05, m = 3: 0.01 <= 0.05/3, 0.02 <= 0.05/2, 0.04 <= 0.05/1: all rejected. With
    # 0.03 second: 0.03 > 0.05/2 stops the procedure, so neither it nor 0.04 is rejected.
    assert [p < 0.05 for p in holm([0.01, 0.02, 0.04])] == [True, True, True]
    assert [p < 0.05 for p in holm([0.01, 0.03, 0.04])] == [True, False, False]


def test_bootstrap_interval_brackets_the_mean_and_is_seeded():
    rng = np.random.default_rng(0)
    b = rng.uniform(0.2, 0.6, size=50)
    a = b + 0.05 + rng.normal(0, 0.02, size=50)
    low, high = bootstrap_interval(a, b, resamples=2000, seed=3)
    mean = float(np.mean(a - b))
    assert low < mean < high and 0.03 < low and high < 0.07
    assert bootstrap_interval(a, b, resamples=2000, seed=3) == (low, high)
    # A constant difference has no spread to resample.
    assert bootstrap_interval([0.5, 0.7], [0.4, 0.6]) == pytest.approx((0.1, 0.1))


def test_paired_inputs_must_match():
    with pytest.raises(ValueError, match="equal-length"):
        paired_randomization_test([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="equal-length"):
        bootstrap_interval([], [])
