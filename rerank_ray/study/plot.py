"""The report's plot: the study's measure against student size, per domain and variant.

One panel per domain (in-domain, out-of-domain), the measure averaged over the domain's suites
and over seeds (error bars: std over seeds), one line per variant; teachers dashed, the first
stage dotted. The x axis is the students' backbone parameters on a log scale (``model_shape``:
truncation applied), with a dotted line between the largest encoder and the smallest decoder;
their layers when a source cannot be read here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rerank_ray.io import atomic_path
from rerank_ray.study.comparisons import cells, variant_label
from rerank_ray.study.config import StudyConfig
from rerank_ray.study.records import EvalRecord, TrialRecord

# Two sizes closer than this factor on the log axis get their tick labels on different lines.
STAGGER = 1.6
log = logging.getLogger(__name__)


def parameter_ticks(xs: list[float], students: list[str]) -> list[str]:
    """Tick labels "<parameters>M\n<student>" for a log axis, each label within a factor
    STAGGER of the previous one's position pushed two lines down (every other one), so the
    names of close sizes (110M and 135M) do not overlap."""
    labels = [""] * len(xs)
    previous, lowered = None, False
    for i in sorted(range(len(xs)), key=lambda i: xs[i]):
        lowered = previous is not None and xs[i] < previous * STAGGER and not lowered
        labels[i] = ("\n\n" if lowered else "") + f"{xs[i] / 1e6:.1f}M\n{students[i]}"
        previous = xs[i]
    return labels


@dataclass
class _SizeAxis:
    """The plot's x axis: students' backbone parameters on a log scale when every student's
    source can be read (``model_shape``: truncation applied), else their layers, else their
    order; with a dotted line between the largest encoder and the smallest decoder."""

    students: list[str]
    xs: list[float]
    label: str
    families: list[str]

    def draw(self, ax: Any) -> None:
        if self.label.startswith("parameters"):
            ax.set_xscale("log")
            ticks = parameter_ticks(self.xs, self.students)
        else:
            ticks = [f"{x:g}" for x in self.xs] if self.label == "layers" else self.students
        ax.set_xticks(self.xs, ticks, fontsize=7)
        ax.minorticks_off()
        ax.set_xlabel(f"student {self.label}")
        encoders = [x for x, f in zip(self.xs, self.families, strict=True) if f == "encoder"]
        decoders = [x for x, f in zip(self.xs, self.families, strict=True) if f != "encoder"]
        if encoders and decoders and max(encoders) < min(decoders):
            edge = (
                float(np.sqrt(max(encoders) * min(decoders)))
                if ax.get_xscale() == "log"
                else (max(encoders) + min(decoders)) / 2
            )
            ax.axvline(edge, linestyle=":", color="tab:red", linewidth=1)
            ax.annotate(
                "encoders | decoders",
                (edge, ax.get_ylim()[0]),
                fontsize=7,
                ha="center",
                va="bottom",
                color="tab:red",
            )


def _size_axis(cfg: StudyConfig) -> _SizeAxis:
    from rerank_ray.models.sources import model_shape

    students = list(cfg.students)
    families = [cfg.students[s].model.family for s in students]
    try:
        params = [float(model_shape(cfg.students[s].model).parameters) for s in students]
        return _SizeAxis(students, params, "parameters (log scale)", families)
    except (OSError, ValueError) as e:  # a source this machine cannot read (SourceError is a ValueError)
        log.info("the plot's x axis falls back to layers: %s", e)
    layers = [cfg.students[s].model.layers(read_source=False) for s in students]
    if all(n is not None for n in layers):
        return _SizeAxis(students, [float(n) for n in layers], "layers", families)
    return _SizeAxis(students, [float(i) for i in range(1, len(students) + 1)], "", families)


def plot(
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
    axis = _size_axis(cfg)
    xs = axis.xs
    for ax, (title, suites) in zip(axes[0], panels, strict=True):
        for v in variants:
            points = []
            for student, x in zip(students, xs, strict=True):
                per_seed = [
                    np.mean([t.eval.scores[s] for s in suites])
                    for t in cells(ok, student, v)
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
        axis.draw(ax)
        ax.set_ylabel(cfg.eval.measure)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"Study {cfg.name}")
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=120, format="png")
    finally:
        plt.close(fig)
    return path
