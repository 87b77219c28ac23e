"""The report's comparisons as typed records, against hand-computed values."""

from __future__ import annotations

import pytest

from rerank_ray.study.comparisons import Answer, TeacherVerdict, VerdictRow, _paired, compare
from rerank_ray.study.config import StudyConfig
from rerank_ray.study.records import EvalRecord, TeacherInfo, TrialRecord


def cfg() -> StudyConfig:
    return StudyConfig.model_validate(
        {
            "name": "c",
            "teachers": {"bi": {"kind": "bi_encoder"}},
            "students": {"l1": {"num_layers": 1}},
            "strategies": ["contrastive", "distillation"],
            "seeds": [0],
            "eval": {"in_domain": ["tiny-dl19"]},
            "report": {"test": "ttest"},
        }
    )


def rec(values: list[float]) -> EvalRecord:
    per_query = {f"q{i}": v for i, v in enumerate(values)}
    return EvalRecord({"tiny-dl19": sum(values) / len(values)}, {"tiny-dl19": per_query})


def test_pairing_keeps_the_queries_both_sides_have_in_query_order():
    assert _paired({"b": 2.0, "a": 1.0, "x": 9.0}, {"a": 0.5, "b": 1.5}) == ([1.0, 2.0], [0.5, 1.5])
    assert _paired({"a": 1.0}, {"b": 1.0}) is None


def test_a_four_query_comparison_by_hand():
    # Differences 0.1, 0.2, 0.1, 0.2: mean 0.15, sample std 0.0577, t = 0.15 / (0.0577 / 2) = 5.196,
    # 3 degrees of freedom: two-sided p = 0.01385.
    trials = [
        TrialRecord("c", "contrastive", "l1", None, 0, "ok", rec([0.1, 0.2, 0.3, 0.4])),
        TrialRecord("d", "distillation", "l1", "bi", 0, "ok", rec([0.2, 0.4, 0.4, 0.6])),
    ]
    info = TeacherInfo(None, "zero-shot", {"T=1": {"mean_entropy": 1.0, "uniform_entropy": 1.386,
                                                   "mean_p_positive": 0.5, "positive_first": 0.6}})  # fmt: skip
    found = compare(cfg(), trials, {"bi": rec([0.2, 0.2, 0.2, 0.2])}, {"bi": info})
    (row,) = found.verdict
    assert row.delta == pytest.approx(0.15) and row.queries == 4
    assert row.p == pytest.approx(0.01385, abs=1e-4) and row.p_holm == row.p  # one comparison: Holm = p
    assert row.decision(0.05) is Answer.DISTIL and row.answer(0.05) == "distil (distillation (bi))"
    assert row.decision(0.01) is Answer.NO_DIFFERENCE
    (teacher,) = found.teachers
    # The teacher (0.2) is no better than the only contrastive student (0.25): it cannot add anything.
    assert (teacher.level, teacher.rival, teacher.rival_level) == (
        pytest.approx(0.2),
        "l1",
        pytest.approx(0.25),
    )
    assert teacher.no_better and teacher.cannot_add and not teacher.one_hot_at and not teacher.same_size


def test_holm_over_the_verdict_rows_and_the_answers_sign():
    rows = [VerdictRow("s", "in-domain", "v", "b", d, 0, 0, p, p, 10) for d, p in ((0.1, 0.01), (-0.1, 0.04))]
    from rerank_ray.study.stats import holm

    adjusted = holm([r.p for r in rows])
    assert adjusted == pytest.approx([0.02, 0.04])  # sorted: 2 x 0.01, then max(0.02, 1 x 0.04)
    rows[1].p_holm = adjusted[1]
    assert rows[1].decision(0.05) is Answer.CONTRAST and rows[1].answer(0.05) == "contrast (b)"
    assert not TeacherVerdict("t", None).cannot_add
