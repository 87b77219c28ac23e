"""The study report: one table, one plot, paired significance tests, and the cost of each run.

Inputs are typed records (``study/records.py``: ``TrialRecord``, ``EvalRecord``, ``Cost``,
``TeacherInfo``; built by ``study/run.py`` from each trial's ``run.json`` and evaluation folder),
so the report can be rebuilt or unit-tested without Ray or MLflow. Every comparison (tests,
intervals, Holm, answers, teacher conclusions) is computed once, as typed records, by
``study/comparisons.py``; this module renders them as markdown and the plot.

- **Table**: rows = students (in the study's order), then one row per teacher and the
  first-stage (BM25) row; columns = benchmark x variant, where a variant is a strategy, or a
  (strategy, teacher) pair for teacher-needing strategies. A cell is the mean ± sample std over
  seeds of the suite's measure (default nDCG@10). A dagger (†) marks a variant that differs from
  the baseline strategy (contrastive) at p < alpha in a paired per-query test, on the same
  student and benchmark; per-query values are averaged over seeds before pairing.
- **Tests** (``study/stats.py``): the paired randomization (sign-flip) test, exact for n <= 16
  queries, else Monte Carlo with ``permutations`` draws; the paired t-test (scipy). Two-sided.
- **What to do**: per student and domain (in-domain / out-of-domain, the ``validation`` suite
  left out: it chooses schedules), each teacher-needing variant against the baseline with the
  per-query values of the domain's suites pooled (each query averaged over seeds): the mean Δ,
  a 95% paired percentile bootstrap interval over queries (``report.bootstrap_resamples``,
  seeded), the chosen paired test, and Holm's correction over all the rows of this section.
  Answer "distil" / "contrast" when the Holm-adjusted p < alpha (by the sign of Δ), else "no
  detectable difference".
- **Teacher diagnostics**: per teacher, its target statistics on the training groups at each
  distillation teacher temperature (``teacher/diagnostics.py``: mean entropy, mean
  p(positive), how often the positive is first), its measure on every suite next to the
  contrastive students', which model its row evaluates, and a plain statement when
  distillation from it cannot add anything: targets close to one-hot, or in-domain no better
  than the contrastive student of its size (or the best one, when its size is unknown).
- **Plot**: the measure, averaged over the domain's benchmarks, against student size (backbone
  parameters on a log scale, with the encoder/decoder boundary; layers when a source cannot be
  read), one line per variant (error bars: std over seeds); in-domain and out-of-domain panels;
  teachers dashed, first stage dotted.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from rerank_ray.io import write_text
from rerank_ray.study import plot as study_plot
from rerank_ray.study.comparisons import (
    SELECTION_SUITES,
    SignificanceRow,
    TeacherVerdict,
    VerdictRow,
    cells,
    compare,
    contrastive_mean,
    variant_label,
)
from rerank_ray.study.config import StudyConfig
from rerank_ray.study.records import Cost, EvalRecord, TeacherInfo, TrialRecord
from rerank_ray.teacher.diagnostics import ONE_HOT_ENTROPY_FRACTION, ONE_HOT_P_POSITIVE, near_one_hot

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# Records.


@dataclass
class Report:
    markdown_path: Path
    plot_path: Path
    table_markdown: str
    significance: list[SignificanceRow]
    verdict: list[VerdictRow] = field(default_factory=list)


def read_per_query(path: Path, measure: str) -> dict[str, float]:
    """``{query_id: value}`` of one measure from an evaluation ``<suite>.per_query.tsv``."""
    import pandas as pd

    frame = pd.read_csv(path, sep="\t", dtype={"query_id": str})
    frame = frame[frame["measure"] == measure]
    return dict(zip(frame["query_id"], frame["value"].astype(float), strict=True))


# ---------------------------------------------------------------------------------------------
# The report.


def build_report(
    cfg: StudyConfig,
    trials: list[TrialRecord],
    *,
    first_stage: EvalRecord | None,
    teachers: dict[str, EvalRecord],
    teacher_costs: dict[str, Cost] | None = None,
    teacher_info: dict[str, TeacherInfo] | None = None,
    out_dir: str | Path,
    command: str = "",
) -> Report:
    """Write ``report.md`` and ``report.png`` under `out_dir` (see the module docstring)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ok = [t for t in trials if t.status == "ok" and t.eval is not None]
    found = compare(cfg, ok, teachers, teacher_info or {})
    variants, significance, verdict = found.variants, found.significance, found.verdict
    marked = {(r.student, r.suite, r.variant) for r in significance if r.p < cfg.report.alpha}
    table = _table(cfg, ok, variants, marked, first_stage, teachers)
    plot_path = study_plot.plot(cfg, ok, variants, first_stage, teachers, out_dir / "report.png")
    lines = [
        *_results_section(cfg, trials, ok, table, plot_path, command, teacher_info or {}),
        "## What to do",
        "",
        *_verdict_section(cfg, verdict),
        "",
        "## Teacher diagnostics",
        "",
        *_diagnostics_section(cfg, ok, teachers, teacher_info or {}, found.teachers),
        "",
        "## Significance",
        "",
        _significance_table(significance),
        "",
        "## Cost",
        "",
        _cost_table(trials, teacher_costs or {}),
    ]
    failed = [t for t in trials if t.status != "ok"]
    if failed:
        lines += ["", "## Failed trials", ""]
        lines += [f"- `{t.name}`: {(t.error or 'no result').strip().splitlines()[-1]}" for t in failed]
    md_path = out_dir / "report.md"
    write_text(md_path, "\n".join(lines) + "\n")
    return Report(
        markdown_path=md_path,
        plot_path=plot_path,
        table_markdown=table,
        significance=significance,
        verdict=verdict,
    )


def _results_section(
    cfg: StudyConfig,
    trials: list[TrialRecord],
    ok: list[TrialRecord],
    table: str,
    plot_path: Path,
    command: str,
    teacher_info: dict[str, TeacherInfo],
) -> list[str]:
    """The report's title, what generated it, the results table with its legend, and the plot."""
    measure = cfg.eval.measure
    test = "paired randomization test" if cfg.report.test == "randomization" else "paired t-test"
    return [
        f"# Study `{cfg.name}`",
        "",
        f"Generated {datetime.now(timezone.utc).isoformat(timespec='seconds')}"
        + (f" by `{command}`" if command else "")
        + f". {len(ok)} of {len(trials)} trials finished; seeds: {', '.join(map(str, cfg.seeds))}.",
        "",
        f"## {measure} (mean ± std over seeds)",
        "",
        f"In-domain: {', '.join(cfg.eval.in_domain) or '-'}; out-of-domain: {', '.join(cfg.eval.out_of_domain) or '-'}.",
        "",
        table,
        "",
        f"† = differs from `{cfg.report.baseline}` on the same student and benchmark at p < "
        f"{cfg.report.alpha} ({test}, two-sided, per-query {measure} averaged over seeds; not "
        "corrected for multiple comparisons: the verdict below is).",
        *[f"Row `teacher: {name}` evaluates {info.evaluates}." for name, info in teacher_info.items()],
        *[f"Teacher `{name}`: {info.selection}." for name, info in teacher_info.items() if info.selection],
        "",
        f"![{measure} against student size]({plot_path.name})",
        "",
    ]


def layers_of(model: Any) -> int | None:
    """A student's layers: as built when its source can be read here, else as configured."""
    from rerank_ray.models.sources import readable_shape

    shape = readable_shape(model)
    return shape.layers if shape is not None else model.layers(read_source=False)


def _mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"


def _verdict_section(cfg: StudyConfig, rows: list[VerdictRow]) -> list[str]:
    if not rows:
        return ["No verdict: no teacher-needing variant and baseline finished on the same student."]
    test = "paired randomization test" if cfg.report.test == "randomization" else "paired t-test"
    alpha = cfg.report.alpha
    intro = (
        f"Each row: a teacher-needing variant against `{rows[0].baseline}` on one student, its "
        f"{cfg.eval.measure} pooled over the domain's benchmarks"
        + (f" (not {', '.join(SELECTION_SUITES)}: it chooses schedules)" if any(
            s in cfg.eval.suites for s in SELECTION_SUITES) else "")
        + f". Δ is the mean over queries of the per-query difference (each query's value averaged "
        f"over seeds first); the interval is a 95% paired percentile bootstrap over queries "
        f"({cfg.report.bootstrap_resamples} resamples, seed {cfg.report.seed}); p is the two-sided {test}, "
        f"Holm-corrected over the {len(rows)} comparisons of this section. Answer: **distil** when the "
        f"variant is better at Holm-corrected p < {alpha}, **contrast** when it is worse, else "
        "**no detectable difference**."
    )  # fmt: skip
    table = _markdown(
        ["student", "layers", "domain", "answer", "variant", "Δ", "95% CI", "p", "p (Holm)", "queries"],
        [
            [
                r.student,
                _layers(cfg, r.student),
                r.domain,
                f"**{r.answer(alpha)}**",
                r.variant,
                f"{r.delta:+.4f}",
                f"[{r.low:+.4f}, {r.high:+.4f}]",
                f"{r.p:.4f}",
                f"{r.p_holm:.4f}",
                str(r.queries),
            ]
            for r in rows
        ],
    )
    return [intro, "", table]


def _layers(cfg: StudyConfig, student: str) -> str:
    size = layers_of(cfg.students[student].model)
    return f"{size:g}" if size is not None else ""


def _diagnostics_section(
    cfg: StudyConfig,
    ok: list[TrialRecord],
    teachers: dict[str, EvalRecord],
    infos: dict[str, TeacherInfo],
    verdicts: list[TeacherVerdict],
) -> list[str]:
    if not teachers:
        return ["No teacher in this study."]
    targets = []
    for name, info in infos.items():
        for stats in info.diagnostics.values():
            targets.append([
                name, f"{stats['temperature']:g}", f"{stats['mean_entropy']:.3f} (uniform {stats['uniform_entropy']:.3f})",
                f"{stats['mean_p_positive']:.3f}", f"{stats['positive_first']:.3f}", str(stats["groups"]),
                "close to one-hot" if near_one_hot(stats) else "soft",
            ])  # fmt: skip
    suites = list(cfg.eval.suites)
    measure_rows = [[f"teacher: {n}"] + [_fmt(r.scores.get(s)) for s in suites] for n, r in teachers.items()]
    for student in cfg.students:
        row = [f"{cfg.report.baseline}: {student}"] + [
            _fmt(contrastive_mean(cfg, ok, student, [s])) for s in suites
        ]
        measure_rows.append(row)
    lines = [
        "Targets on the training groups at the distillation teacher temperature T "
        '(softmax of teacher score / T over each group; entropy in nats; "close to one-hot" = mean '
        f"entropy < {ONE_HOT_ENTROPY_FRACTION:g}·ln(group size) or mean p(positive) > {ONE_HOT_P_POSITIVE:g}):",
        "",
        _markdown(
            [
                "teacher",
                "T",
                "mean entropy",
                "mean p(positive)",
                "positive ranked first",
                "groups",
                "targets",
            ],
            targets,
        )
        if targets
        else "No target diagnostics were recorded.",
        "",
        f"{cfg.eval.measure} of each teacher next to the contrastive students (mean over seeds):",
        "",
        _markdown(["model", *suites], measure_rows),
        "",
    ]
    return lines + [f"- {_teacher_conclusion(cfg, v)}" for v in verdicts]


def _teacher_conclusion(cfg: StudyConfig, v: TeacherVerdict) -> str:
    """One teacher's line: whether distillation from it can add anything, and why not."""
    if v.info is None:
        return f"`{v.name}`: no diagnostics."
    reasons = []
    if v.one_hot_at:
        reasons.append(
            f"its targets are close to one-hot at {', '.join(v.one_hot_at)}, almost the contrastive label"
        )
    comparison = ""
    if v.rival is not None and v.level is not None and v.rival_level is not None:
        which = "contrastive student of its size" if v.same_size else "best contrastive student"
        comparison = f"in-domain {cfg.eval.measure} {v.level:.3f} against {v.rival_level:.3f} for the {which} `{v.rival}`"
        if v.no_better:
            reasons.append(f"it is no better than the contrastive student ({comparison})")
    head = f"`{v.name}` (its row evaluates {v.info.evaluates})"
    above, below = v.stronger_than()
    if below and not v.same_size:
        reasons.append(
            f"in domain it is not stronger than the contrastive {_listed(v, below)}"
            + (f" (it is stronger than {_listed(v, above)})" if above else "")
        )
    if v.cannot_add:
        return f"{head}: **distillation from it cannot add anything**: " + "; ".join(reasons) + "."
    every = f"; in domain it is stronger than every contrastive student: {_listed(v, above)}" if above else ""
    return (
        f"{head}: soft targets"
        + (f" and {comparison}" if comparison else "")
        + every
        + "; distillation has something to teach."
    )


def _listed(v: TeacherVerdict, students: list[str]) -> str:
    return ", ".join(f"`{s}` ({v.contrastive[s]:.3f})" for s in students)


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _table(
    cfg: StudyConfig,
    ok: list[TrialRecord],
    variants: list[tuple[str, str | None]],
    marked: set[tuple[str, str, str]],
    first_stage: EvalRecord | None,
    teachers: dict[str, EvalRecord],
) -> str:
    suites = cfg.eval.suites
    header = ["student", "layers"] + [f"{suite} · {variant_label(*v)}" for suite in suites for v in variants]
    rows = []
    for student, spec in cfg.students.items():
        size = layers_of(spec.model)
        row = [student, f"{size:g}" if size is not None else ""]
        for suite in suites:
            for v in variants:
                runs = cells(ok, student, v)
                values = [t.eval.scores[suite] for t in runs if t.eval and suite in t.eval.scores]
                dagger = "†" if (student, suite, variant_label(*v)) in marked else ""
                row.append(_mean_std(values) + dagger)
        rows.append(row)
    references = [(f"teacher: {name}", rec) for name, rec in teachers.items()]
    if first_stage is not None:
        references.append((f"first stage ({cfg.base.data.first_stage})", first_stage))
    for label, rec in references:
        row = [label, ""]
        for suite in suites:
            value = rec.scores.get(suite)
            row += [f"{value:.3f}" if value is not None else "–"] * len(variants)
        rows.append(row)
    return _markdown(header, rows)


def _significance_table(rows: list[SignificanceRow]) -> str:
    if not rows:
        return "No paired comparisons (a baseline or a variant did not finish)."
    return _markdown(
        ["student", "benchmark", "variant", "vs", "Δ", "p (randomization)", "p (t-test)", "queries"],
        [
            [
                r.student,
                r.suite,
                r.variant,
                r.baseline,
                f"{r.delta:+.4f}",
                f"{r.p_randomization:.4f}",
                f"{r.p_ttest:.4f}",
                str(r.queries),
            ]
            for r in rows
        ],
    )


def _cost_table(trials: list[TrialRecord], teacher_costs: dict[str, Cost]) -> str:
    def fmt(value: Any, spec: str) -> str:
        return (
            "–" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)
        )

    rows = []
    for name, cost in teacher_costs.items():
        rows.append(
            [
                f"teacher {name}",
                "ok",
                fmt(cost.wall_s, ".0f"),
                fmt(cost.forecast_wall_s, ".0f"),
                fmt(cost.pairs_per_s, ".1f"),
                fmt(cost.cpu_hours, ".3f"),
                fmt(cost.gpu_hours, ".3f"),
                f"scoring {fmt(cost.scoring_wall_s, '.0f')} s, {fmt(cost.scoring_pairs_per_s, '.1f')} pairs/s, "
                f"{fmt(cost.scoring_cpu_hours, '.3f')} CPU-h (once)",
            ]
        )
    for t in trials:
        c = t.cost
        rows.append(
            [
                t.name,
                t.status,
                fmt(c.wall_s, ".0f"),
                fmt(c.forecast_wall_s, ".0f"),
                fmt(c.pairs_per_s, ".1f"),
                fmt(c.cpu_hours, ".3f"),
                fmt(c.gpu_hours, ".3f"),
                _checkpoint_note(c),
            ]
        )
    # forecast: `rerank-ray study --dry-run`'s wall time (study/forecast.py), for comparison.
    header = ["run", "status", "wall (s)", "forecast (s)", "train pairs/s", "CPU-h", "GPU-h", "notes"]
    return _markdown(header, rows)


def _checkpoint_note(cost: Cost) -> str:
    """What the trial's checkpoints cost (the price of surviving a lost node), when it took any."""
    if not cost.checkpoints:
        return ""
    s = cost.checkpoint_s or 0.0
    return f"{cost.checkpoints:.0f} checkpoints, {s:.1f} s ({s / cost.checkpoints:.2f} s each)"


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
