"""The study report: one table, one plot, paired significance tests, and the cost of each run.

Inputs are plain records (built by ``tune/study.py`` from each trial's ``trial.json`` and
evaluation folder), so the report can be rebuilt or unit-tested without Ray or MLflow.

- **Table**: rows = students (in the study's order), then one row per teacher and the
  first-stage (BM25) row; columns = benchmark x variant, where a variant is a strategy, or a
  (strategy, teacher) pair for teacher-needing strategies. A cell is the mean ± sample std over
  seeds of the suite's measure (default nDCG@10). A dagger (†) marks a variant that differs from
  the baseline strategy (contrastive) at p < alpha in a paired per-query test, on the same
  student and benchmark; per-query values are averaged over seeds before pairing.
- **Tests**: the paired randomization (sign-flip) test is exact (all 2^n sign vectors) for
  n <= 16 queries, otherwise Monte Carlo with ``permutations`` draws and the (count + 1) /
  (draws + 1) estimate (Smucker, Allan & Carterette, CIKM 2007); the paired t-test is
  ``scipy.stats.ttest_rel``. Both are two-sided.
- **Plot**: the measure, averaged over the domain's benchmarks, against student size (layers),
  one line per variant (error bars: std over seeds); in-domain and out-of-domain panels;
  teachers dashed, first stage dotted.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from rerank_ray.config import ModelConfig
from rerank_ray.tune.config import StudyConfig

EXACT_MAX_QUERIES = 16


# ---------------------------------------------------------------------------------------------
# Significance.


def paired_randomization_test(
    a: Sequence[float], b: Sequence[float], *, permutations: int = 10_000, seed: int = 0
) -> float:
    """Two-sided p-value of mean(a - b) != 0 under random sign flips of the paired differences."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if d.shape != np.asarray(b).shape or d.ndim != 1 or len(d) == 0:
        raise ValueError(
            f"paired test needs two equal-length, non-empty 1-d sequences; got {len(a)} and {len(b)}"
        )
    observed = abs(d.mean())
    tolerance = 1e-12 * max(1.0, observed)
    if len(d) <= EXACT_MAX_QUERIES:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=len(d))))
        return float(np.mean(np.abs(signs @ d) / len(d) >= observed - tolerance))
    rng = np.random.default_rng(seed)
    signs = rng.choice((1.0, -1.0), size=(permutations, len(d)))
    count = int(np.sum(np.abs(signs @ d) / len(d) >= observed - tolerance))
    return (count + 1) / (permutations + 1)


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of scipy's paired t-test; 1.0 when every difference is zero."""
    from scipy import stats

    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if np.allclose(d, 0.0):
        return 1.0
    return float(stats.ttest_rel(a, b).pvalue)


# ---------------------------------------------------------------------------------------------
# Records.


@dataclass
class EvalRecord:
    """One evaluated scorer: per suite, the measure's mean and its per-query values."""

    scores: dict[str, float]
    per_query: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class TrialRecord:
    name: str
    strategy: str
    student: str
    teacher: str | None
    seed: int
    status: str  # "ok" | "error"
    eval: EvalRecord | None = None
    # wall_s, pairs_per_s, cpu_hours, gpu_hours
    cost: dict[str, float] = field(default_factory=dict)
    error: str | None = None


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
class Report:
    markdown_path: Path
    plot_path: Path
    table_markdown: str
    significance: list[SignificanceRow]


def read_per_query(path: Path, measure: str) -> dict[str, float]:
    """``{query_id: value}`` of one measure from an evaluation ``<suite>.per_query.tsv``."""
    import pandas as pd

    frame = pd.read_csv(path, sep="\t", dtype={"query_id": str})
    frame = frame[frame["measure"] == measure]
    return dict(zip(frame["query_id"], frame["value"].astype(float), strict=True))


def student_size(model: ModelConfig) -> float | None:
    """Layers of a student: ``num_layers``, else ``config_overrides.num_hidden_layers``."""
    layers = model.num_layers or model.config_overrides.get("num_hidden_layers")
    return float(layers) if layers is not None else None


def variant_label(strategy: str, teacher: str | None) -> str:
    return strategy if teacher is None else f"{strategy} ({teacher})"


# ---------------------------------------------------------------------------------------------
# The report.


def build_report(
    cfg: StudyConfig,
    trials: list[TrialRecord],
    *,
    first_stage: EvalRecord | None,
    teachers: dict[str, EvalRecord],
    teacher_costs: dict[str, dict[str, float]] | None = None,
    out_dir: str | Path,
    command: str = "",
) -> Report:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ok = [t for t in trials if t.status == "ok" and t.eval is not None]
    variants = _variants(cfg, ok)
    significance = _significance(cfg, ok, variants)
    marked = {(r.student, r.suite, r.variant) for r in significance if r.p < cfg.report.alpha}
    table = _table(cfg, ok, variants, marked, first_stage, teachers)
    plot_path = _plot(cfg, ok, variants, first_stage, teachers, out_dir / "report.png")

    measure = cfg.eval.measure
    test = "paired randomization test" if cfg.report.test == "randomization" else "paired t-test"
    lines = [
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
        f"{cfg.report.alpha} ({test}, two-sided, per-query {measure} averaged over seeds).",
        "",
        f"![{measure} against student size]({plot_path.name})",
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
    md_path.write_text("\n".join(lines) + "\n")
    return Report(markdown_path=md_path, plot_path=plot_path, table_markdown=table, significance=significance)


def _variants(cfg: StudyConfig, ok: list[TrialRecord]) -> list[tuple[str, str | None]]:
    present = {(t.strategy, t.teacher) for t in ok}
    order = [(s, None) for s in cfg.strategies] + [(s, t) for s in cfg.strategies for t in cfg.teachers]
    return [v for v in order if v in present]


def _cells(ok: list[TrialRecord], student: str, variant: tuple[str, str | None]) -> list[TrialRecord]:
    return [t for t in ok if t.student == student and (t.strategy, t.teacher) == variant]


def _mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"


def _seed_averaged(runs: list[TrialRecord], suite: str) -> dict[str, float]:
    per_query: dict[str, list[float]] = {}
    for run in runs:
        assert run.eval is not None
        for qid, value in run.eval.per_query.get(suite, {}).items():
            per_query.setdefault(qid, []).append(value)
    return {qid: float(np.mean(v)) for qid, v in per_query.items() if len(v) == len(runs)}


def _significance(
    cfg: StudyConfig, ok: list[TrialRecord], variants: list[tuple[str, str | None]]
) -> list[SignificanceRow]:
    rows = []
    baseline = (cfg.report.baseline, None)
    for student in cfg.students:
        base_runs = _cells(ok, student, baseline)
        if not base_runs:
            continue
        for variant in variants:
            runs = _cells(ok, student, variant)
            if variant == baseline or not runs:
                continue
            for suite in cfg.eval.suites:
                a, b = _seed_averaged(runs, suite), _seed_averaged(base_runs, suite)
                common = sorted(set(a) & set(b))
                if not common:
                    continue
                xa, xb = [a[q] for q in common], [b[q] for q in common]
                p_rand = paired_randomization_test(
                    xa, xb, permutations=cfg.report.permutations, seed=cfg.report.seed
                )
                p_t = paired_t_test(xa, xb)
                rows.append(
                    SignificanceRow(
                        student=student,
                        suite=suite,
                        variant=variant_label(*variant),
                        baseline=variant_label(*baseline),
                        delta=float(np.mean(xa) - np.mean(xb)),
                        p_randomization=p_rand,
                        p_ttest=p_t,
                        queries=len(common),
                        test=cfg.report.test,
                    )
                )
    return rows


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
    for student, model in cfg.students.items():
        size = student_size(model)
        row = [student, f"{size:g}" if size is not None else ""]
        for suite in suites:
            for v in variants:
                runs = _cells(ok, student, v)
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


def _cost_table(trials: list[TrialRecord], teacher_costs: dict[str, dict[str, float]]) -> str:
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
                fmt(cost.get("wall_s"), ".0f"),
                fmt(cost.get("forecast_wall_s"), ".0f"),
                fmt(cost.get("pairs_per_s"), ".1f"),
                fmt(cost.get("cpu_hours"), ".3f"),
                fmt(cost.get("gpu_hours"), ".3f"),
                f"scoring {fmt(cost.get('scoring_wall_s'), '.0f')} s, {fmt(cost.get('scoring_pairs_per_s'), '.1f')} pairs/s, "
                f"{fmt(cost.get('scoring_cpu_hours'), '.3f')} CPU-h (once)",
            ]
        )
    for t in trials:
        c = t.cost
        rows.append(
            [
                t.name,
                t.status,
                fmt(c.get("wall_s"), ".0f"),
                fmt(c.get("forecast_wall_s"), ".0f"),
                fmt(c.get("pairs_per_s"), ".1f"),
                fmt(c.get("cpu_hours"), ".3f"),
                fmt(c.get("gpu_hours"), ".3f"),
                "",
            ]
        )
    # forecast: `rerank-ray study --dry-run`'s wall time (tune/forecast.py), for comparison.
    header = ["run", "status", "wall (s)", "forecast (s)", "train pairs/s", "CPU-h", "GPU-h", "notes"]
    return _markdown(header, rows)


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _plot(
    cfg: StudyConfig,
    ok: list[TrialRecord],
    variants: list[tuple[str, str | None]],
    first_stage: EvalRecord | None,
    teachers: dict[str, EvalRecord],
    path: Path,
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("in-domain", cfg.eval.in_domain), ("out-of-domain", cfg.eval.out_of_domain)]
    panels = [p for p in panels if p[1]]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    students = list(cfg.students)
    sizes = [student_size(cfg.students[s]) for s in students]
    xs = sizes if all(s is not None for s in sizes) else list(range(1, len(students) + 1))
    for ax, (title, suites) in zip(axes[0], panels, strict=True):
        for v in variants:
            points = []
            for student, x in zip(students, xs, strict=True):
                per_seed = [
                    np.mean([t.eval.scores[s] for s in suites])
                    for t in _cells(ok, student, v)
                    if t.eval and all(s in t.eval.scores for s in suites)
                ]
                if per_seed:
                    std = float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else 0.0
                    points.append((x, float(np.mean(per_seed)), std))
            if points:
                px, py, pe = zip(*points, strict=True)
                ax.errorbar(px, py, yerr=pe, marker="o", capsize=3, label=variant_label(*v))
        for name, rec in teachers.items():
            if all(s in rec.scores for s in suites):
                ax.axhline(
                    np.mean([rec.scores[s] for s in suites]), linestyle="--", color="grey", linewidth=1
                )
                ax.annotate(f"teacher {name}", (xs[0], np.mean([rec.scores[s] for s in suites])), fontsize=7)
        if first_stage is not None and all(s in first_stage.scores for s in suites):
            level = np.mean([first_stage.scores[s] for s in suites])
            ax.axhline(level, linestyle=":", color="black", linewidth=1)
            ax.annotate("first stage", (xs[0], level), fontsize=7)
        ax.set_title(f"{title}: {', '.join(suites)}")
        ax.set_xlabel("student layers" if all(s is not None for s in sizes) else "student")
        ax.set_xticks(xs, [f"{x:g}" for x in xs] if all(s is not None for s in sizes) else students)
        ax.set_ylabel(cfg.eval.measure)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"Study {cfg.name}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
