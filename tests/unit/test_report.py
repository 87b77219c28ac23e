"""The report's significance tests on constructed cases with known answers, and the report itself."""

from __future__ import annotations

import math

import pytest

from rerank_ray.tune.config import StudyConfig
from rerank_ray.tune.report import (
    EvalRecord,
    TrialRecord,
    build_report,
    paired_randomization_test,
    paired_t_test,
)


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


def study() -> StudyConfig:
    return StudyConfig.model_validate(
        {
            "name": "demo",
            "teachers": {"bi": {"kind": "bi_encoder"}},
            "students": {"l1": {"num_layers": 1}, "l2": {"num_layers": 2}},
            "strategies": ["contrastive", "distillation"],
            "seeds": [0, 1],
            "eval": {"in_domain": ["tiny-dl19"], "out_of_domain": ["tiny-scifact"]},
        }
    )


def record(level: float, n: int = 12) -> EvalRecord:
    per_query = {
        suite: {f"q{i}": level + 0.001 * i for i in range(n)} for suite in ("tiny-dl19", "tiny-scifact")
    }
    return EvalRecord(
        scores={s: sum(v.values()) / len(v) for s, v in per_query.items()},
        per_query=per_query,
    )


def test_report_marks_significant_cells_and_lists_failures(tmp_path):
    trials = []
    for student, base in (("l1", 0.30), ("l2", 0.40)):
        for seed in (0, 1):
            trials.append(
                TrialRecord(
                    f"contrastive-{student}-s{seed}",
                    "contrastive",
                    student,
                    None,
                    seed,
                    "ok",
                    record(base),
                    {"wall_s": 10.0},
                )
            )
            # Distillation is better by 0.1 on every query for l1; equal for l2.
            gain = 0.1 if student == "l1" else 0.0
            trials.append(
                TrialRecord(
                    f"distillation-{student}-bi-s{seed}",
                    "distillation",
                    student,
                    "bi",
                    seed,
                    "ok",
                    record(base + gain),
                )
            )
    trials.append(
        TrialRecord(
            "distillation-l2-bi-s9", "distillation", "l2", "bi", 9, "error", error="boom\nValueError: bad"
        )
    )
    report = build_report(
        study(),
        trials,
        first_stage=record(0.2),
        teachers={"bi": record(0.6)},
        teacher_costs={"bi": {"scoring_wall_s": 3.0, "scoring_pairs_per_s": 100.0}},
        out_dir=tmp_path,
    )
    table = report.table_markdown
    l1 = next(line for line in table.splitlines() if line.startswith("| l1 "))
    l2 = next(line for line in table.splitlines() if line.startswith("| l2 "))
    assert l1.count("†") == 2 and "†" not in l2
    assert "teacher: bi" in table and "first stage (bm25-top100)" in table
    rows = {(r.student, r.suite): r for r in report.significance}
    assert rows[("l1", "tiny-dl19")].p == pytest.approx(2 / 4096)  # exact over 12 queries
    assert rows[("l1", "tiny-dl19")].delta == pytest.approx(0.1)
    assert rows[("l2", "tiny-dl19")].p == 1.0 and math.isclose(rows[("l2", "tiny-dl19")].p_ttest, 1.0)
    text = report.markdown_path.read_text()
    assert "## Failed trials" in text and "ValueError: bad" in text
    assert report.plot_path.is_file() and report.plot_path.stat().st_size > 1000
