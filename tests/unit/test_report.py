"""The report on constructed trial records: table marks, verdict, teacher diagnostics, failures."""

from __future__ import annotations

import dataclasses
import math
import os
import re
from pathlib import Path

import pytest

from rerank_ray.config import ModelConfig
from rerank_ray.models.sources import model_shape
from rerank_ray.study.config import StudyConfig
from rerank_ray.study.records import Cost, EvalRecord, TrialRecord
from rerank_ray.study.report import TeacherInfo, build_report


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


def record(level: float, n: int = 12, jitter: float = 0.0) -> EvalRecord:
    per_query = {
        suite: {f"q{i}": level + 0.001 * i + jitter * (-1) ** i * (i % 3) for i in range(n)}
        for suite in ("tiny-dl19", "tiny-scifact")
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
                    Cost(wall_s=10.0),
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
        teacher_costs={"bi": Cost(scoring_wall_s=3.0, scoring_pairs_per_s=100.0)},
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


def trials_with_gain(gain: float, jitter: float = 0.0) -> list[TrialRecord]:
    """l1 and l2, two seeds each: contrastive at 0.3, distillation from `bi` at 0.3 + gain (l1 only)."""
    trials = []
    for student in ("l1", "l2"):
        for seed in (0, 1):
            trials.append(
                TrialRecord(f"c-{student}-{seed}", "contrastive", student, None, seed, "ok", record(0.3))
            )
            level = 0.3 + (gain if student == "l1" else 0.0)
            trials.append(
                TrialRecord(
                    f"d-{student}-{seed}",
                    "distillation",
                    student,
                    "bi",
                    seed,
                    "ok",
                    record(level, jitter=jitter),
                )
            )
    return trials


def test_verdict_answers_per_student_and_domain_with_holm(tmp_path):
    report = build_report(
        study(), trials_with_gain(0.1), first_stage=None, teachers={"bi": record(0.6)}, out_dir=tmp_path
    )
    rows = {(r.student, r.domain): r for r in report.verdict}
    assert set(rows) == {(s, d) for s in ("l1", "l2") for d in ("in-domain", "out-of-domain")}
    l1 = rows[("l1", "in-domain")]
    # 12 queries all better by 0.1: exact randomization p = 2/4096, Holm over 4 comparisons
    # (the two l2 rows have p = 1): sorted 2/4096, 2/4096, 1, 1 -> 4*2/4096, then max(3*2/4096, ..).
    assert l1.delta == pytest.approx(0.1) and (l1.low, l1.high) == pytest.approx((0.1, 0.1))
    assert l1.p == pytest.approx(2 / 4096) and l1.p_holm == pytest.approx(8 / 4096)
    assert l1.answer(0.05) == "distil (distillation (bi))"
    assert rows[("l2", "out-of-domain")].answer(0.05) == "no detectable difference"
    text = report.markdown_path.read_text()
    assert "## What to do" in text and "Holm-corrected over the 4 comparisons" in text
    # A worse variant says "contrast".
    worse = build_report(
        study(), trials_with_gain(-0.1), first_stage=None, teachers={}, out_dir=tmp_path / "w"
    )
    assert worse.verdict[0].answer(0.05) == "contrast (contrastive)"


# A teacher of student l2's capacity (what teacher_info records: its backbone's parameters).
L2_SIZE = float(model_shape(ModelConfig(num_layers=2)).parameters)


def test_teacher_diagnostics_section_says_when_distillation_cannot_help(tmp_path):
    one_hot = {"temperature": 1.0, "groups": 10, "group_size": 8, "uniform_entropy": 2.0794,
               "mean_entropy": 0.05, "mean_p_positive": 0.99, "positive_first": 1.0}  # fmt: skip
    soft = {**one_hot, "mean_entropy": 0.9, "mean_p_positive": 0.55, "positive_first": 0.7}
    teachers = {"bi": record(0.6), "ce": record(0.2)}
    infos = {
        "bi": TeacherInfo(None, "zero-shot bi-encoder", {"T=1": soft}),
        "ce": TeacherInfo(L2_SIZE, "the teacher trained on every training group", {"T=1": one_hot}),
    }
    report = build_report(
        study(),
        trials_with_gain(0.0),
        first_stage=None,
        teachers=teachers,
        teacher_info=infos,
        out_dir=tmp_path,
    )
    text = report.markdown_path.read_text()
    section = text.split("## Teacher diagnostics")[1].split("## Significance")[0]
    assert "| bi | 1 | 0.900 (uniform 2.079) | 0.550 | 0.700 | 10 | soft |" in section
    assert "| ce | 1 | 0.050 (uniform 2.079) | 0.990 | 1.000 | 10 | close to one-hot |" in section
    assert "| contrastive: l1 | 0.305 | 0.305 |" in section
    bi_line = next(line for line in section.splitlines() if line.startswith("- `bi`"))
    ce_line = next(line for line in section.splitlines() if line.startswith("- `ce`"))
    assert (
        "cannot add anything" not in bi_line
        and "against 0.305 for the best contrastive student `l1`" in bi_line
    )
    # ce (2 layers) is compared with the 2-layer contrastive student and loses; its targets are one-hot.
    assert "cannot add anything" in ce_line and "close to one-hot at T=1" in ce_line
    assert "no better than the contrastive student" in ce_line and "`l2`" in ce_line


GOLDEN = Path(__file__).parent / "data" / "report_golden.md"


def golden_report(out_dir) -> str:
    """Every section of the report on constructed records (a gain on l1, none on l2, a failed
    trial, two teachers with diagnostics, costs), with the generation time masked."""
    one_hot = {"temperature": 1.0, "groups": 10, "group_size": 8, "uniform_entropy": 2.0794,
               "mean_entropy": 0.05, "mean_p_positive": 0.99, "positive_first": 1.0}  # fmt: skip
    soft = {**one_hot, "mean_entropy": 0.9, "mean_p_positive": 0.55, "positive_first": 0.7}
    trials = trials_with_gain(0.05, jitter=0.02)
    trials[0] = dataclasses.replace(trials[0], cost=Cost(wall_s=12.0, cpu_hours=0.01, forecast_wall_s=10.0))
    trials.append(
        TrialRecord("d-l2-9", "distillation", "l2", "bi", 9, "error", error="boom\nValueError: bad")
    )
    report = build_report(
        study(),
        trials,
        first_stage=record(0.2),
        teachers={"bi": record(0.6), "ce": record(0.25)},
        teacher_costs={"bi": Cost(scoring_wall_s=3.0, scoring_pairs_per_s=100.0), "ce": Cost(wall_s=30.0)},
        teacher_info={
            "bi": TeacherInfo(None, "zero-shot bi-encoder", {"T=1": soft}),
            "ce": TeacherInfo(L2_SIZE, "the teacher trained on every training group", {"T=1": one_hot}),
        },
        out_dir=out_dir,
        command="rerank-ray study demo.yaml",
    )
    return re.sub(r"^Generated \S+", "Generated <time>", report.markdown_path.read_text(), flags=re.M)


def test_the_report_is_byte_for_byte_the_recorded_one(tmp_path):
    """A restructuring of the report keeps its every byte (the golden file was written by the
    report before its comparisons became typed records); a deliberate change rewrites it with
    RERANK_RAY_WRITE_GOLDEN=1."""
    text = golden_report(tmp_path)
    if os.environ.get("RERANK_RAY_WRITE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()


def test_the_teacher_line_says_per_size_whether_it_is_stronger_in_domain():
    from rerank_ray.study.comparisons import TeacherVerdict
    from rerank_ray.study.report import _teacher_conclusion

    soft = {"T=1": {"mean_entropy": 0.9, "uniform_entropy": 1.386, "mean_p_positive": 0.5}}
    info = TeacherInfo(None, "its chosen candidate `bi`", soft)
    cfg = study()
    students = {"l1": 0.31, "l2": 0.52}
    weak = TeacherVerdict("t", info, [], 0.45, "l2", 0.52, False, students)
    line = _teacher_conclusion(cfg, weak)
    assert "**distillation from it cannot add anything**" in line
    assert (
        "in domain it is not stronger than the contrastive `l2` (0.520) (it is stronger than `l1` (0.310))"
        in line
    )
    strong = TeacherVerdict("t", info, [], 0.60, "l2", 0.52, False, students)
    assert "in domain it is stronger than every contrastive student: `l1` (0.310), `l2` (0.520)" in (
        _teacher_conclusion(cfg, strong)
    )


def test_close_sizes_get_their_tick_labels_on_different_lines():
    # The size study's axis: MPNet-base (109.5M) and SmolLM2 (134.5M) overlapped on one line.
    from rerank_ray.study.plot import parameter_ticks

    xs = [22.7e6, 17.4e6, 134.5e6, 109.5e6]
    labels = parameter_ticks(xs, ["l6", "l3", "smollm2", "mpnet"])
    assert labels == ["\n\n22.7M\nl6", "17.4M\nl3", "\n\n134.5M\nsmollm2", "109.5M\nmpnet"]
    # Far apart: one line each.
    assert parameter_ticks([1e6, 1e8], ["a", "b"]) == ["1.0M\na", "100.0M\nb"]
