"""Every comparison a study's report makes, computed once, as typed records (no text).

``compare(cfg, trials, teachers, infos)`` returns :class:`Comparisons`:

- ``significance``: per student, benchmark and variant against the baseline strategy, a
  :class:`SignificanceRow` (Δ over queries, the paired randomization and t-test p-values, the
  study's chosen one as ``.p``); per-query values are averaged over seeds before pairing;
- ``verdict``: per student and domain (in-domain / out-of-domain, the ``validation`` suite left
  out: it chooses schedules), each teacher-needing variant against the baseline with the
  domain's per-query values pooled: a :class:`VerdictRow` (Δ, 95% paired bootstrap interval,
  the chosen test's p, Holm's p over every row, and the :class:`Answer`);
- ``teachers``: per teacher, a :class:`TeacherVerdict`: whether its targets are close to
  one-hot, its in-domain level against its rival contrastive student (the one of its size, else
  the best), and so whether distillation from it cannot add anything.

Pairing (the queries both sides have) and the test (``report.test``: ``study/stats.py``) are
each done in one place, :func:`_paired` and :func:`_tests`. ``study/report.py`` only renders
these records.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from rerank_ray.study.config import StudyConfig
from rerank_ray.study.records import EvalRecord, TeacherInfo, TrialRecord
from rerank_ray.study.stats import bootstrap_interval, holm, paired_randomization_test, paired_t_test
from rerank_ray.teacher.diagnostics import near_one_hot

# Suites left out of the verdict: the validation split chooses schedules, it does not judge them.
SELECTION_SUITES = ("validation",)

Variant = tuple[str, str | None]  # (strategy, teacher or None)


class Answer(str, Enum):
    DISTIL = "distil"
    CONTRAST = "contrast"
    NO_DIFFERENCE = "no detectable difference"


@dataclass
class SignificanceRow:
    student: str
    suite: str
    variant: str
    baseline: str
    delta: float
    p_randomization: float
    p_ttest: float
    queries: int
    test: str = "randomization"

    @property
    def p(self) -> float:
        """The p-value of the study's chosen test (``report.test``)."""
        return self.p_randomization if self.test == "randomization" else self.p_ttest


@dataclass
class VerdictRow:
    """One "what to do" answer: a teacher-needing variant against the baseline, pooled over the
    domain's suites (per-query values averaged over seeds; queries keyed by suite)."""

    student: str
    domain: str
    variant: str
    baseline: str
    delta: float
    low: float
    high: float
    p: float
    p_holm: float
    queries: int

    def decision(self, alpha: float) -> Answer:
        if self.p_holm >= alpha:
            return Answer.NO_DIFFERENCE
        return Answer.DISTIL if self.delta > 0 else Answer.CONTRAST

    def answer(self, alpha: float) -> str:
        """The decision with the variant it names: ``distil (<variant>)``, ``contrast (<baseline>)``."""
        decision = self.decision(alpha)
        if decision is Answer.NO_DIFFERENCE:
            return decision.value
        return f"{decision.value} ({self.variant if decision is Answer.DISTIL else self.baseline})"


@dataclass(frozen=True)
class TeacherVerdict:
    """Whether distilling from teacher `name` can add anything, and why not.

    ``one_hot_at``: the temperatures (``T=<t>``) at which its targets are close to one-hot;
    ``level``: its in-domain measure; ``rival``: the contrastive student it is compared with (of
    its size, ``same_size``, else the best one) and ``rival_level`` that student's in-domain
    measure; ``contrastive``: every contrastive student's in-domain measure (is the teacher
    stronger than each size?); ``no_better``: the teacher's level does not exceed the rival's."""

    name: str
    info: TeacherInfo | None
    one_hot_at: list[str] = field(default_factory=list)
    level: float | None = None
    rival: str | None = None
    rival_level: float | None = None
    same_size: bool = False
    contrastive: dict[str, float] = field(default_factory=dict)

    def stronger_than(self) -> tuple[list[str], list[str]]:
        """(contrastive students the teacher beats in domain, those it does not)."""
        if self.level is None:
            return [], []
        level = self.level
        return [s for s, v in self.contrastive.items() if level > v], [
            s for s, v in self.contrastive.items() if level <= v
        ]

    @property
    def no_better(self) -> bool:
        return self.level is not None and self.rival_level is not None and self.level <= self.rival_level

    @property
    def cannot_add(self) -> bool:
        return bool(self.one_hot_at) or self.no_better


@dataclass
class Comparisons:
    variants: list[Variant]
    significance: list[SignificanceRow]
    verdict: list[VerdictRow]
    teachers: list[TeacherVerdict]


def compare(
    cfg: StudyConfig, ok: list[TrialRecord], teachers: dict[str, EvalRecord], infos: dict[str, TeacherInfo]
) -> Comparisons:
    """Every comparison of the report over the finished trials `ok`."""
    found = variants(cfg, ok)
    return Comparisons(
        variants=found,
        significance=significance(cfg, ok, found),
        verdict=verdict(cfg, ok, found),
        teachers=[
            teacher_verdict(cfg, ok, name, record, infos.get(name)) for name, record in teachers.items()
        ],
    )


def variant_label(strategy: str, teacher: str | None) -> str:
    return strategy if teacher is None else f"{strategy} ({teacher})"


def variants(cfg: StudyConfig, ok: list[TrialRecord]) -> list[Variant]:
    present = {(t.strategy, t.teacher) for t in ok}
    order = [(s, None) for s in cfg.strategies] + [(s, t) for s in cfg.strategies for t in cfg.teachers]
    return [v for v in order if v in present]


def cells(ok: list[TrialRecord], student: str, variant: Variant) -> list[TrialRecord]:
    return [t for t in ok if t.student == student and (t.strategy, t.teacher) == variant]


def seed_averaged(runs: list[TrialRecord], suite: str) -> dict[str, float]:
    """Each query's value averaged over the runs (seeds); queries every run has."""
    per_query: dict[str, list[float]] = {}
    for run in runs:
        assert run.eval is not None
        for qid, value in run.eval.per_query.get(suite, {}).items():
            per_query.setdefault(qid, []).append(value)
    return {qid: float(np.mean(v)) for qid, v in per_query.items() if len(v) == len(runs)}


def domains(cfg: StudyConfig) -> list[tuple[str, list[str]]]:
    """(domain, its suites without the selection suites), for the domains that have suites."""
    found = [("in-domain", cfg.eval.in_domain), ("out-of-domain", cfg.eval.out_of_domain)]
    found = [(name, [s for s in suites if s not in SELECTION_SUITES]) for name, suites in found]
    return [(name, suites) for name, suites in found if suites]


def significance(cfg: StudyConfig, ok: list[TrialRecord], found: list[Variant]) -> list[SignificanceRow]:
    """Every variant against the baseline, per student and benchmark."""
    rows = []
    baseline = (cfg.report.baseline, None)
    for student in cfg.students:
        base_runs = cells(ok, student, baseline)
        if not base_runs:
            continue
        for variant in found:
            runs = cells(ok, student, variant)
            if variant == baseline or not runs:
                continue
            for suite in cfg.eval.suites:
                pair = _paired(seed_averaged(runs, suite), seed_averaged(base_runs, suite))
                if pair is None:
                    continue
                p_rand, p_t = _tests(cfg, *pair)
                rows.append(
                    SignificanceRow(
                        student, suite, variant_label(*variant), variant_label(*baseline), _delta(*pair),
                        p_rand, p_t, len(pair[0]), test=cfg.report.test,
                    )
                )  # fmt: skip
    return rows


def verdict(cfg: StudyConfig, ok: list[TrialRecord], found: list[Variant]) -> list[VerdictRow]:
    """Every teacher-needing variant against the baseline, per student and domain, with
    Holm-adjusted p-values over all of these comparisons."""
    baseline = (cfg.report.baseline, None)
    rows: list[VerdictRow] = []
    for student in cfg.students:
        base_runs = cells(ok, student, baseline)
        for domain, suites in domains(cfg):
            b = _pooled(base_runs, suites)
            for variant in [v for v in found if v[1] is not None]:
                pair = _paired(_pooled(cells(ok, student, variant), suites), b)
                if pair is None:
                    continue
                p_rand, p_t = _tests(cfg, *pair, both=False)
                p = p_rand if cfg.report.test == "randomization" else p_t
                low, high = bootstrap_interval(
                    *pair, resamples=cfg.report.bootstrap_resamples, seed=cfg.report.seed
                )
                rows.append(
                    VerdictRow(student, domain, variant_label(*variant), variant_label(*baseline), _delta(*pair), low, high, p, p, len(pair[0]))
                )  # fmt: skip
    for row, adjusted in zip(rows, holm([r.p for r in rows]), strict=True):
        row.p_holm = adjusted
    return rows


def contrastive_mean(
    cfg: StudyConfig, ok: list[TrialRecord], student: str, suites: list[str]
) -> float | None:
    """The baseline strategy's measure on `student`, averaged over `suites`, then over seeds."""
    runs = cells(ok, student, (cfg.report.baseline, None))
    per_seed = [
        np.mean([t.eval.scores[s] for s in suites])
        for t in runs
        if t.eval and all(s in t.eval.scores for s in suites)
    ]
    return float(np.mean(per_seed)) if per_seed else None


def teacher_verdict(
    cfg: StudyConfig, ok: list[TrialRecord], name: str, record: EvalRecord, info: TeacherInfo | None
) -> TeacherVerdict:
    """Teacher `name` against its rival contrastive student, in domain, and its targets."""
    if info is None:
        return TeacherVerdict(name, None)
    in_domain = [s for s in cfg.eval.in_domain if s not in SELECTION_SUITES] or list(cfg.eval.in_domain)
    one_hot = [k for k, stats in info.diagnostics.items() if near_one_hot(stats)]
    rival = _rival(cfg, ok, info, in_domain) if in_domain else None
    level = (
        float(np.mean([record.scores[s] for s in in_domain]))
        if all(s in record.scores for s in in_domain)
        else None
    )
    if rival is None or level is None:
        return TeacherVerdict(name, info, one_hot)
    from rerank_ray.models.sources import comparable_size

    same = info.size is not None and comparable_size(cfg.students[rival[0]].model) == info.size
    means = {s: contrastive_mean(cfg, ok, s, in_domain) for s in cfg.students}
    contrastive = {s: m for s, m in means.items() if m is not None}
    return TeacherVerdict(name, info, one_hot, level, rival[0], rival[1], same, contrastive)


def _rival(
    cfg: StudyConfig, ok: list[TrialRecord], info: TeacherInfo, suites: list[str]
) -> tuple[str, float] | None:
    """The contrastive student a teacher is compared with: the one of the teacher's size, else
    the best one, with its in-domain mean."""
    means = {s: contrastive_mean(cfg, ok, s, suites) for s in cfg.students}
    means = {s: m for s, m in means.items() if m is not None}
    from rerank_ray.models.sources import comparable_size

    sizes = {s: comparable_size(cfg.students[s].model) for s in means}
    same = [s for s in means if info.size is not None and sizes[s] == info.size]
    if same:
        return same[0], means[same[0]]
    if not means:
        return None
    best = max(means, key=lambda s: means[s])
    return best, means[best]


def _pooled(runs: list[TrialRecord], suites: list[str]) -> dict[str, float]:
    """Seed-averaged per-query values of every suite, keyed ``<suite>/<query_id>``."""
    out: dict[str, float] = {}
    for suite in suites:
        out.update({f"{suite}/{q}": v for q, v in seed_averaged(runs, suite).items()})
    return out


def _paired(a: dict[str, float], b: dict[str, float]) -> tuple[list[float], list[float]] | None:
    """The values of the queries both sides have, in query order; None when they share none."""
    common = sorted(set(a) & set(b))
    if not common:
        return None
    return [a[q] for q in common], [b[q] for q in common]


def _tests(cfg: StudyConfig, xa: list[float], xb: list[float], *, both: bool = True) -> tuple[float, float]:
    """(randomization p, t-test p), two-sided; with ``both=False`` only the study's chosen test
    runs and the other is NaN."""
    run_rand = both or cfg.report.test == "randomization"
    run_t = both or cfg.report.test != "randomization"
    p_rand = (
        paired_randomization_test(xa, xb, permutations=cfg.report.permutations, seed=cfg.report.seed)
        if run_rand
        else float("nan")
    )
    return p_rand, paired_t_test(xa, xb) if run_t else float("nan")


def _delta(xa: list[float], xb: list[float]) -> float:
    return float(np.mean(xa) - np.mean(xb))
