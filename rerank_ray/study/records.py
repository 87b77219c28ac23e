"""The typed records a study's stages hand each other, and the files they are written to.

- :class:`EvalSummary`: one scorer evaluated on the study's suites (``evaluate_suites``);
  written to ``<eval_dir>/eval.json``.
- :class:`Cost`: what a trial or a teacher cost (training, scoring, the forecast beside them).
- :class:`TrialSummary`: one finished training run, a trial's or a study teacher's
  (``train_and_evaluate``); written into the run's one record ``<run_dir>/run.json``
  (``train/record.py``), read back to reuse the run
  (``finished_summary``), to find a trial's model (``study/registry.py``) and to build its
  :class:`TrialRecord` (``study/run.py``).
- :class:`EvalRecord`: what the report needs of one evaluated scorer (a trial, a teacher, the
  first stage): the measure per suite and its per-query values; in memory only.
- :class:`TrialRecord`: one planned trial's outcome, built by the study (``study/run.py``),
  read by the report (``study/report.py``) and the registry (``study/registry.py``), and returned
  to the caller in ``StudyResult.trials``; in memory only (its files are the trial's
  ``run.json`` and ``eval/``).

The JSON keys are those the files had when they were plain dicts, so finished trials on disk
stay readable (and reusable) across this change: ``eval.json`` is ``{"metrics", "scores",
"measure", "eval_dir"}``; a summary (in ``run.json``, or an older ``trial.json``) is ``{"name", "metrics", "scores", "cost", "model_dir",
"eval_dir", "run_config", "identity"}``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from rerank_ray.train.identity import RunIdentity

# Keys of a scores manifest's ``cost`` that describe how the job ran, not what it cost.
SCORING_LAYOUT = ("actors", "where")


@dataclass(frozen=True)
class EvalSummary:
    """One scorer's evaluation on the study's suites.

    ``metrics``: ``mlflow_key(suite, measure) -> value`` for every measure of every suite (what
    is logged); ``scores``: ``suite -> value`` of the study's ``measure``; ``eval_dir``: the
    folder with each suite's ``<suite>.run`` and ``<suite>.per_query.tsv``."""

    metrics: dict[str, float]
    scores: dict[str, float]
    measure: str
    eval_dir: Path

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "eval_dir": str(self.eval_dir)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EvalSummary:
        return cls(
            metrics=dict(data["metrics"]),
            scores=dict(data["scores"]),
            measure=data["measure"],
            eval_dir=Path(data["eval_dir"]),
        )


@dataclass(frozen=True)
class Cost:
    """What a run cost; None = not measured (or not this run's part: a trial does no scoring).

    Training: ``wall_s`` (the whole run: training and evaluation), ``train_wall_s``,
    ``pairs_per_s`` (training throughput), ``cpu_hours`` and ``gpu_hours`` (the train workers
    for the training time plus the trial process for the whole run).
    Scoring a teacher's groups (from its scores manifest): ``scoring_*``. ``checkpoints`` and
    ``checkpoint_s``: the training's checkpoints and the time spent saving them. ``forecast_wall_s``:
    the dry run's forecast of ``wall_s`` (``study/forecast.py``), set by the study for the
    report's cost table."""

    wall_s: float | None = None
    train_wall_s: float | None = None
    pairs_per_s: float | None = None
    cpu_hours: float | None = None
    gpu_hours: float | None = None
    scoring_wall_s: float | None = None
    scoring_pairs_scored_now: float | None = None
    scoring_pairs_per_s: float | None = None
    scoring_cpu_hours: float | None = None
    scoring_gpu_hours: float | None = None
    forecast_wall_s: float | None = None
    # What the fault tolerance cost: checkpoints saved during training and the seconds they took.
    checkpoints: float | None = None
    checkpoint_s: float | None = None

    def to_json(self) -> dict[str, float]:
        """The measured fields (None left out), under their field names."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Cost:
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown cost keys {unknown}; known: {', '.join(f.name for f in fields(cls))}")
        return cls(**data)

    def with_scoring(self, manifest_cost: dict[str, Any]) -> Cost:
        """This cost plus a scoring job's (a scores manifest's ``cost``: ``wall_s``,
        ``pairs_scored_now``, ``pairs_per_s``, ``cpu_hours``, ``gpu_hours``, ``actors``,
        ``where``), under ``scoring_*``; ``actors`` and ``where`` (pool or in process) are the
        job's layout, not a cost, and are left out."""
        scoring = {f"scoring_{k}": v for k, v in manifest_cost.items() if k not in SCORING_LAYOUT}
        return replace(self, **scoring)

    def __add__(self, other: Cost) -> Cost:
        """Field by field sum (a cross-fitted teacher's folds); None + None stays None."""
        summed = {}
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            summed[f.name] = None if a is None and b is None else (a or 0.0) + (b or 0.0)
        return Cost(**summed)


@dataclass(frozen=True)
class TrialSummary:
    """One finished training run (a trial, or a study teacher) and its evaluation.

    ``metrics`` and ``scores`` are its :class:`EvalSummary`'s; ``run_config`` the
    ``RunConfig.to_dict()`` it ran; ``identity`` its content identity (``train/identity.py``;
    None when the file predates identities: such a run is never reused)."""

    name: str
    metrics: dict[str, float]
    scores: dict[str, float]
    cost: Cost
    model_dir: Path
    eval_dir: Path
    run_config: dict[str, Any]
    identity: RunIdentity | None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "metrics": self.metrics,
            "scores": self.scores,
            "cost": self.cost.to_json(),
            "model_dir": str(self.model_dir),
            "eval_dir": str(self.eval_dir),
            "run_config": self.run_config,
            "identity": self.identity.to_json() if self.identity else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrialSummary:
        return cls(
            name=data["name"],
            metrics=dict(data["metrics"]),
            scores=dict(data["scores"]),
            cost=Cost.from_json(data["cost"]),
            model_dir=Path(data["model_dir"]),
            eval_dir=Path(data["eval_dir"]),
            run_config=data["run_config"],
            identity=RunIdentity.from_json(data.get("identity")),
        )


@dataclass
class EvalRecord:
    """One evaluated scorer: per suite, the measure's mean and its per-query values."""

    scores: dict[str, float]
    per_query: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class TrialRecord:
    """One planned trial's outcome: its axes (as in its ``TrialPlan``), then what it produced.

    ``status`` "ok": it finished (now, or ``reused`` from an earlier run of the study with the
    same inputs, not trained again): ``eval`` is its evaluation, ``cost`` its cost (with the
    forecast beside it when there was one), ``metrics`` what it logged to its MLflow run at the
    end: every measure of every suite under its MLflow key, and ``cost/<field>``.
    ``status`` "error": ``error`` says why; ``eval`` is None and ``metrics`` empty."""

    name: str
    strategy: str
    student: str
    teacher: str | None
    seed: int
    status: str  # "ok" | "error"
    eval: EvalRecord | None = None
    cost: Cost = field(default_factory=Cost)
    error: str | None = None
    reused: bool = False
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class TeacherInfo:
    """What the report knows of a teacher besides its evaluation.

    ``size``: when it is a study-trained cross-encoder, its ``comparable_size`` (backbone
    parameters; layers when its source cannot be read), compared with the contrastive student
    of the same size; else None; ``evaluates``: which model its row evaluates (one
    teacher, or the cross-fit fold teachers' mean); ``diagnostics``: ``{"T=<t>": stats}`` of
    ``teacher.diagnostics.target_statistics`` on the training groups; ``selection``: a
    ``best_of`` teacher's choice, one sentence."""

    size: float | None
    evaluates: str
    diagnostics: dict[str, dict[str, float]] = field(default_factory=dict)
    # A best_of teacher: how it was chosen (each candidate's score on the held-out suite).
    selection: str | None = None
