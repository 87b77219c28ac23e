"""``rerank-ray study <file.yaml>``: teachers once, teacher scores once, a Tune grid, a report.

``run_study(cfg)`` runs, in the driver:

0. the plan (``plan_study``; every name was checked when the config loaded), a local Ray
   (``tune.num_cpus`` logical CPUs) unless ``$RAY_ADDRESS`` names a cluster, the check that
   every alive node sees the study folder (``cluster.check_nodes``: on a cluster it must be on
   shared storage, ``$RERANK_RAY_STORAGE``), the MLflow experiment and the study's parent run;
1. the training groups, built once from ``base`` and shared by every teacher and trial (so the
   only differences between trials are the grid's axes), and the first-stage evaluation;
2. each teacher the plan uses, once: a study-trained cross-encoder is trained contrastively
   (a child run, ``role=teacher``) and evaluated; a given checkpoint or a bi-encoder is only
   evaluated. A teacher trained earlier under the study folder with the same inputs (config,
   groups content, base weights: ``train/identity.py``) is reused; the log says which changed.
   A cross-fitted teacher (``cross_fit: k``) is trained k times on k-1 folds of the training
   queries (``teacher/crossfit.py``; nested runs ``role=teacher_fold``), each fold teacher scores
   the fold it did not see, and its evaluation is the fold teachers' mean;
3. teacher scores for the groups (``teacher.score.score_groups``: resumable, reused when up to
   date), one job per teacher, and the teacher's target diagnostics on the groups
   (``teacher/diagnostics.py``), stored in the scores manifest;
4. the trials. A trial that finished earlier with the same inputs (its ``run.json`` identity:
   config, groups content, teacher scores, base weights) is reused as it is, with a child run
   tagged ``reused=true`` that repeats its metrics; so a rerun of an interrupted study trains
   only what is unfinished or changed. The rest run as a Ray Tune grid over their plans
   (``tune/trial.py``), at most ``tune.max_concurrent_trials`` at a time; a failed trial is
   recorded and the others go on. Reuse is decided here, in the driver, rather than inside the
   trainable: the driver already has every input hashed, and a reused trial then costs no
   trial process, no Ray resources, and no wait behind ``max_concurrent_trials``;
5. the report (``tune/report.py``), written to ``<study>/report/`` and logged to the parent run.

Layout under ``<base.output_dir>/<name>/``: ``groups/``, ``first_stage/``,
``teachers/<teacher>/`` (``teacher-<name>/`` training run, ``eval/``, ``scores/``;
``cross_fit-k<k>-seed<s>/teacher-<name>-fold<i>/`` per fold: ``groups/{train,scored}/``, model,
``scores/``),
``trials/<trial>/``, ``tune/`` (Ray Tune's storage), ``report/``.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rerank_ray.cluster import StorageToken, check_nodes, fault_tolerance_line
from rerank_ray.config import resolve_tracking_uri
from rerank_ray.io import write_json, write_yaml
from rerank_ray.ray_runtime import run_need, scoring_need, start_ray
from rerank_ray.teacher.config import TeacherModel
from rerank_ray.train.identity import run_identity
from rerank_ray.train.record import RECORD
from rerank_ray.tune import logbook
from rerank_ray.tune.config import (
    BiEncoderTeacher,
    CrossEncoderTeacher,
    ScoresTeacher,
    StudyConfig,
    load_study,
)
from rerank_ray.tune.forecast import ForecastError, StudyForecast, ThroughputTable, forecast_study
from rerank_ray.tune.plan import TrialPlan, longest_first, plan_study, teacher_scores_dir, teachers_used
from rerank_ray.tune.records import Cost, EvalRecord, EvalSummary, TrialRecord, TrialSummary
from rerank_ray.tune.report import Report, TeacherInfo, build_report, read_per_query
from rerank_ray.tune.tracking import (
    check_tracking_server,
    child_tags,
    ensure_experiment,
    flatten_params,
    numeric,
    redact_config,
    redact_uri,
    report_first,
    run_note,
    study_run,
)
from rerank_ray.tune.trial import (
    cost_metrics,
    evaluate_suites,
    finished_summary,
    read_summary,
    run_trial,
    train_and_evaluate,
)

if TYPE_CHECKING:
    from rerank_ray.tune.registry import Registered

__all__ = ["StudyResult", "TrialRecord", "load_study", "plan_study", "run_study"]

log = logging.getLogger("rerank_ray.tune")


@dataclass
class StudyResult:
    report_md: Path
    plot_png: Path
    table_markdown: str
    tracking_uri: str
    experiment: str
    parent_run_id: str
    experiment_id: str
    # Every planned trial, in plan order.
    trials: list[TrialRecord]
    # The best student of each strategy, registered under the study's name (tune/registry.py).
    registered: list[Registered] = field(default_factory=list)


@dataclass
class StudyTeachers:
    """What the study's teachers hand the report, per teacher name: the evaluation (none for a
    scores teacher, which has no model), the cost, and what the report says of it."""

    records: dict[str, EvalRecord] = field(default_factory=dict)
    costs: dict[str, Cost] = field(default_factory=dict)
    info: dict[str, TeacherInfo] = field(default_factory=dict)


def run_study(cfg: StudyConfig, *, command: str | None = None) -> StudyResult:
    """Run the study `cfg` (the module docstring's steps 0-5); `command` is quoted in the report."""
    import mlflow

    # 0. The plan, the study folder, the forecast, Ray and the MLflow experiment.
    plans = plan_study(cfg)
    tracking_uri = resolve_tracking_uri(cfg.base.mlflow)
    check_tracking_server(tracking_uri)  # seconds, before anything starts
    forecast, token = _prepare(cfg, plans)
    experiment_id = ensure_experiment(tracking_uri, cfg.base.mlflow.experiment)
    mlflow.set_tracking_uri(tracking_uri)
    logbook.bound_retries()
    logbook.sync_study(cfg.study_dir, tracking_uri)  # what an earlier run deferred, first
    log.info(
        "study %s: %d trial(s); MLflow %s, experiment %r",
        cfg.name, len(plans), redact_uri(tracking_uri), cfg.base.mlflow.experiment,
    )  # fmt: skip
    with study_run(experiment_id, cfg.name, cfg.study_dir, tracking_uri) as parent:
        parent_id = parent.run_id
        _log_study(cfg, plans, forecast)
        # 1. The shared groups and the first stage; 2-3. the teachers and their scores.
        groups_path = _groups(cfg)
        first_stage = _first_stage(cfg)
        teachers = _teachers(cfg, plans, groups_path, experiment_id, parent_id)
        # 4. The trials: reused when finished with the same inputs, the rest on Ray Tune.
        walls = forecast.walls() if forecast else {}
        ctx = _study_context(cfg, groups_path, tracking_uri, experiment_id, parent_id, token)
        records = _run_trials(cfg, plans, walls, groups_path, ctx)
        for plan, record in zip(plans, records, strict=True):
            _add_evaluation(cfg, plan, record)
        _add_forecast(walls, records, teachers.costs)
        # 5. The report, and the best student of each strategy registered.
        report = _report(cfg, records, first_stage, teachers, command)
        from rerank_ray.tune.registry import register_best

        registered = register_best(cfg, plans, records, parent_id)
        failed = [r.name for r in records if r.status != "ok"]
        logbook.set_tags({"trials_failed": str(len(failed)), "trials_ok": str(len(records) - len(failed))})
    if failed:
        log.warning(
            "study %s: %d trial(s) failed: %s (see the report)", cfg.name, len(failed), ", ".join(failed)
        )
    return StudyResult(
        report_md=report.markdown_path,
        plot_png=report.plot_path,
        table_markdown=report.table_markdown,
        tracking_uri=tracking_uri,
        experiment=cfg.base.mlflow.experiment,
        parent_run_id=parent_id,
        experiment_id=experiment_id,
        trials=records,
        registered=registered,
    )


def _prepare(cfg: StudyConfig, plans: list[TrialPlan]) -> tuple[StudyForecast | None, StorageToken]:
    """Write the study folder's ``study.yaml`` (secrets redacted) and forecast, start (or join)
    Ray with room for every trial and the scoring job, and check that every node sees the study
    folder (``cluster.check_nodes``) before anything trains; returns the forecast and the
    storage token each trial checks again."""
    study_dir = cfg.study_dir
    study_dir.mkdir(parents=True, exist_ok=True)
    write_yaml(study_dir / "study.yaml", redact_config(cfg.to_dict()))
    needs = [run_need(p.run, f"trial {p.name}", p.resources) for p in plans] + [scoring_need(cfg.scoring)]
    forecast = _forecast(cfg, plans, study_dir)
    start_ray(num_cpus=cfg.tune.num_cpus, needs=needs)
    token = check_nodes(study_dir)
    log.info("study %s: %s", cfg.name, fault_tolerance_line(cfg.base.train, cfg.tune.max_failures))
    return forecast, token


def _log_study(cfg: StudyConfig, plans: list[TrialPlan], forecast: StudyForecast | None) -> None:
    """The study's axes and base config as the parent run's parameters; its files as artifacts."""
    logbook.log_params(
        {
            "students": ",".join(cfg.students),
            "strategies": ",".join(cfg.strategies),
            "teachers": ",".join(cfg.teachers) or "none",
            "seeds": ",".join(map(str, cfg.seeds)),
            "trials": len(plans),
            **flatten_params(cfg.base.to_dict(), prefix="base."),
        }
    )
    logbook.log_artifact(str(cfg.study_dir / "study.yaml"))
    if forecast is not None:
        logbook.log_artifact(str(cfg.study_dir / "forecast.json"))


def _groups(cfg: StudyConfig) -> Path:
    from rerank_ray.data.groups import build_groups

    groups = build_groups(cfg.base, cfg.study_dir / "groups")
    log.info("groups: %s", groups.stats.summary())
    logbook.log_params({"groups": groups.stats.summary()})
    return groups.path


def _first_stage(cfg: StudyConfig) -> EvalRecord:
    """The first stage evaluated on every suite (``first_stage/`` metrics of the parent run)."""
    evaluation = evaluate_suites(
        None, cfg.eval, cfg.study_dir / "first_stage", root=cfg.base.data.root, data=cfg.base.data
    )
    record = _evaluation_record(evaluation, cfg)
    logbook.log_metrics({f"first_stage/{k}": v for k, v in _keys(record, cfg).items()})
    return record


def _teachers(
    cfg: StudyConfig, plans: list[TrialPlan], groups_path: Path, experiment_id: str, parent_id: str
) -> StudyTeachers:
    """Each teacher the plans use, once: trained or loaded, evaluated, scoring the groups."""
    teachers = StudyTeachers()
    for name in teachers_used(plans):
        record, teachers.costs[name] = _teacher(cfg, name, groups_path, experiment_id, parent_id)
        teachers.info[name] = _teacher_info(cfg, name, groups_path)
        if record is not None:  # a scores teacher has no model to evaluate
            teachers.records[name] = record
            logbook.log_metrics({f"teacher/{name}/{k}": v for k, v in _keys(record, cfg).items()})
    return teachers


def _report(
    cfg: StudyConfig,
    records: list[TrialRecord],
    first_stage: EvalRecord,
    teachers: StudyTeachers,
    command: str | None,
) -> Report:
    """Build the report under ``<study>/report/`` and log it to the parent run (its first
    lines become the run's note)."""
    report = build_report(
        cfg,
        records,
        first_stage=first_stage,
        teachers=teachers.records,
        teacher_costs=teachers.costs,
        teacher_info=teachers.info,
        out_dir=cfg.study_dir / "report",
        command=command or " ".join(["rerank-ray", *sys.argv[1:]]),
    )
    logbook.log_artifacts(str(cfg.study_dir / "report"), "report")
    logbook.set_tag("mlflow.note.content", run_note(report_first(report)))
    return report


def _teacher(
    cfg: StudyConfig, name: str, groups_path: Path, experiment_id: str, parent_id: str
) -> tuple[EvalRecord | None, Cost]:
    """Train (or load) teacher `name`, evaluate it and score the groups with it, in a child run.
    A scores teacher has no model to evaluate: its record is None."""
    spec = cfg.teachers[name]
    if isinstance(spec, CrossEncoderTeacher) and spec.cross_fit is not None:
        return _cross_fit_teacher(cfg, name, groups_path, experiment_id, parent_id)
    tags = child_tags(cfg.name, parent_id, "teacher", teacher=name, kind=spec.kind)
    # experiment_id is explicit: a nested run does not inherit its parent's experiment.
    with logbook.start_run(f"teacher-{name}", tags=tags):
        if isinstance(spec, ScoresTeacher):
            return None, given_scores(spec, groups_path, teacher_scores_dir(cfg, name))
        if isinstance(spec, BiEncoderTeacher):
            scorer, evaluation, cost = _bi_encoder_teacher(cfg, name, spec)
        elif spec.trains:
            scorer, evaluation, cost = _trained_teacher(cfg, name, groups_path)
        else:
            scorer, evaluation, cost = _given_cross_encoder(cfg, name, spec)
        cost = _score_groups(cfg, name, scorer, groups_path, cost)
    return _evaluation_record(evaluation, cfg), cost


def _trained_teacher(
    cfg: StudyConfig, name: str, groups_path: Path
) -> tuple[TeacherModel, TrialSummary, Cost]:
    """A study-trained cross-encoder: trained contrastively on the groups and evaluated
    (``train_and_evaluate``), or reused when a finished run had the same inputs."""
    run = cfg.teacher_run(name)
    summary = finished_summary(run, groups_path, f"teacher {name}")
    if summary is None:
        summary = train_and_evaluate(
            run, groups_path=groups_path, eval_cfg=cfg.eval, trial_cpus=0.0, trial_gpus=0.0
        )
    else:
        logbook.set_tag("reused", "true")
        logbook.log_metrics(summary.metrics)
    return TeacherModel(kind="cross_encoder", path=str(summary.model_dir)), summary, summary.cost


def _given_cross_encoder(
    cfg: StudyConfig, name: str, spec: CrossEncoderTeacher
) -> tuple[TeacherModel, EvalSummary, Cost]:
    """A cross-encoder used as it is (a saved folder, or a published reranker imported into
    ``teachers/<name>/``), evaluated; it costs nothing to train."""
    from rerank_ray.teacher.given import import_reranker

    path = spec.path or str(import_reranker(spec.pretrained(), cfg.study_dir / "teachers" / name))
    if spec.source is not None:
        logbook.log_params({"teacher.source": spec.source, "teacher.family": spec.pretrained().family})
    scorer = TeacherModel(kind="cross_encoder", path=path)
    return scorer, _evaluate_teacher(cfg, name, path), Cost()


def _bi_encoder_teacher(
    cfg: StudyConfig, name: str, spec: BiEncoderTeacher
) -> tuple[TeacherModel, EvalSummary, Cost]:
    """A zero-shot bi-encoder, evaluated as it is; it costs nothing to train."""
    scorer = spec.scorer()
    logbook.log_params(flatten_params(spec.model_dump(mode="json"), prefix="teacher."))
    return scorer, _evaluate_teacher(cfg, name, scorer), Cost()


def _evaluate_teacher(cfg: StudyConfig, name: str, model: str | TeacherModel) -> EvalSummary:
    """A teacher that is not trained here, evaluated on every suite into ``teachers/<name>/eval``
    and logged to its (active) run."""
    teacher_dir = cfg.study_dir / "teachers" / name
    evaluation = evaluate_suites(
        model, cfg.eval, teacher_dir / "eval", root=cfg.base.data.root, tag=name, data=cfg.base.data
    )
    logbook.log_metrics(evaluation.metrics)
    logbook.log_artifacts(str(evaluation.eval_dir), "eval")
    return evaluation


def _score_groups(cfg: StudyConfig, name: str, scorer: TeacherModel, groups_path: Path, cost: Cost) -> Cost:
    """Score the groups with teacher `name` (``score_groups``: resumable, reused when up to
    date); returns `cost` with the scoring job's, both logged to the active run."""
    from rerank_ray.heartbeat import heartbeat
    from rerank_ray.teacher.score import score_groups

    with heartbeat(f"scoring with teacher {name}", waiting_on="the Ray Data scoring job"):
        scores = score_groups(groups_path, scorer, teacher_scores_dir(cfg, name), scoring=cfg.scoring)
    logbook.log_artifact(str(scores.path.parent / "manifest.json"), "teacher_scores")
    cost = cost.with_scoring(scores.manifest["cost"])
    logbook.log_metrics(cost_metrics(cost))
    return cost


def _teacher_info(cfg: StudyConfig, name: str, groups_path: Path) -> TeacherInfo:
    """Teacher `name`'s target diagnostics on the groups (stored in its scores manifest, at each
    teacher temperature of the study's teacher-needing strategies), its size, and what its
    report row evaluates."""
    from rerank_ray.teacher.diagnostics import add_diagnostics
    from rerank_ray.teacher.score import SCORES_DIR

    temperatures = [s.teacher_temperature for s in cfg.strategies.values() if s.needs_teacher]
    scores_dir = teacher_scores_dir(cfg, name) / SCORES_DIR
    diagnostics = add_diagnostics(
        scores_dir, groups_path, temperatures or [cfg.base.loss.teacher_temperature]
    )
    for stats in diagnostics.values():
        prefix = f"teacher/{name}/diagnostics/T{stats['temperature']:g}"
        logbook.log_metrics({f"{prefix}/{k}": v for k, v in numeric(stats).items()})
    spec = cfg.teachers[name]
    if isinstance(spec, BiEncoderTeacher):
        return TeacherInfo(None, f"zero-shot bi-encoder {spec.source}", diagnostics)
    if isinstance(spec, ScoresTeacher):
        return TeacherInfo(None, f"precomputed scores {spec.path} (no model to evaluate)", diagnostics)
    if not spec.trains:
        return TeacherInfo(None, f"the given reranker {spec.path or spec.source}", diagnostics)
    if spec.cross_fit is not None:
        evaluates = (
            f"the mean of the {spec.cross_fit} cross-fit fold teachers (each trained on "
            f"{spec.cross_fit - 1}/{spec.cross_fit} of the training queries; together they scored the groups)"
        )
    else:
        evaluates = "the teacher trained on every training group (the groups it scored)"
    return TeacherInfo(spec.model.layers(read_source=False), evaluates, diagnostics)


def _cross_fit_teacher(
    cfg: StudyConfig, name: str, groups_path: Path, experiment_id: str, parent_id: str
) -> tuple[EvalRecord, Cost]:
    """Teacher `name` cross-fitted (``teacher.cross_fit``, see ``teacher/crossfit.py``): k fold
    teachers, each trained on k-1 folds of the training queries (a nested child run each) and
    scoring the held-out fold; the scores are merged into the teacher's one scores folder.
    The returned evaluation is the fold teachers' mean (per query and per suite, as seeds are
    averaged), since no single teacher produced the targets."""
    import pandas as pd

    from rerank_ray.teacher import crossfit

    spec = cfg.teachers[name]
    assert isinstance(spec, CrossEncoderTeacher) and spec.cross_fit is not None

    query_ids = pd.read_parquet(groups_path, columns=["query_id"])["query_id"].astype(str).tolist()
    folds = crossfit.assign_folds(query_ids, spec.cross_fit, spec.cross_fit_seed)
    tags = child_tags(
        cfg.name, parent_id, "teacher", teacher=name, kind=spec.kind, cross_fit=str(spec.cross_fit)
    )
    records, evaluations, cost = [], [], Cost()
    with logbook.start_run(f"teacher-{name}", tags=tags) as run:
        for fold in range(spec.cross_fit):
            record, evaluation, fold_cost = _fold_teacher(
                cfg, name, fold, folds, groups_path, experiment_id, run.ref
            )
            records.append(record)
            evaluations.append(evaluation)
            cost += fold_cost
        out_dir = teacher_scores_dir(cfg, name)
        crossfit.merge_fold_scores(records, out_dir, k=spec.cross_fit, seed=spec.cross_fit_seed)
        logbook.log_artifact(str(out_dir / "manifest.json"), "teacher_scores")
        logbook.log_metrics(cost_metrics(cost))
    return _mean_record(evaluations), cost


def _fold_teacher(
    cfg: StudyConfig,
    name: str,
    fold: int,
    folds: dict[str, int],
    groups_path: Path,
    experiment_id: str,
    parent_id: str,
) -> tuple[Any, EvalRecord, Cost]:
    """Train (or reuse) fold teacher `fold` on the other folds' groups in a nested run, score
    its own fold's groups; returns its ``crossfit.FoldRecord``, evaluation and summed cost."""
    from rerank_ray.teacher import crossfit
    from rerank_ray.teacher.score import score_groups
    from rerank_ray.train.identity import run_identity

    run = cfg.teacher_run(name, fold)
    fold_dir = Path(run.output_dir) / run.name
    train_groups, scored_groups = crossfit.split_groups(groups_path, folds, fold, fold_dir / "groups")
    tags = child_tags(cfg.name, parent_id, "teacher_fold", teacher=name, fold=str(fold))
    with logbook.start_run(run.name, tags=tags):
        summary = finished_summary(run, train_groups, f"teacher {name} fold {fold}") or train_and_evaluate(
            run, groups_path=train_groups, eval_cfg=cfg.eval, trial_cpus=0.0, trial_gpus=0.0
        )
        scorer = TeacherModel(kind="cross_encoder", path=str(summary.model_dir))
        scores = score_groups(scored_groups, scorer, fold_dir / "scores", scoring=cfg.scoring)
    record = crossfit.fold_record(
        fold, train_groups, scored_groups,
        run_fingerprint=run_identity(run, train_groups).fingerprint, score_manifest=scores.manifest,
        model_dir=str(summary.model_dir), scores_dir=str(scores.path),
    )  # fmt: skip
    return record, _evaluation_record(summary, cfg), summary.cost.with_scoring(scores.manifest["cost"])


def _mean_record(records: list[EvalRecord]) -> EvalRecord:
    """Per suite, the mean of the records' scores and of their per-query values."""
    suites = records[0].scores
    return EvalRecord(
        scores={s: float(sum(r.scores[s] for r in records) / len(records)) for s in suites},
        per_query={
            s: {q: sum(r.per_query[s][q] for r in records) / len(records) for q in records[0].per_query[s]}
            for s in records[0].per_query
        },
    )


def given_scores(spec: ScoresTeacher, groups_path: Path, out_dir: Path) -> Cost:
    """Import a precomputed score file as the teacher's scores; log its provenance (path,
    sha256, rows) to the active run. Returns the (zero) scoring cost."""
    from rerank_ray.teacher.given import import_scores

    scores = import_scores(spec.path, groups_path, out_dir)
    logbook.log_params(
        {f"teacher.{k}": v for k, v in scores.manifest["teacher"].items() if k != "fingerprint"}
    )
    logbook.log_artifact(str(out_dir / "manifest.json"), "teacher_scores")
    return Cost(scoring_wall_s=0.0, scoring_cpu_hours=0.0, scoring_gpu_hours=0.0)


def _forecast(cfg: StudyConfig, plans: list[TrialPlan], study_dir: Path) -> StudyForecast | None:
    """The dry run's forecast, written to ``forecast.json``; None (with a warning) without a
    throughput table, which only the cost table's forecast column needs."""
    try:
        table = ThroughputTable.load()
    except ForecastError as e:
        log.warning("study %s: no cost forecast: %s", cfg.name, e)
        return None
    forecast = forecast_study(cfg, plans, table)
    write_json(study_dir / "forecast.json", forecast.to_json())
    return forecast


def _add_forecast(
    walls: dict[str, float], records: list[TrialRecord], teacher_costs: dict[str, Cost]
) -> None:
    """Put each run's forecast wall time beside its actual cost (the report's cost table)."""
    for record in records:
        if record.name in walls:
            record.cost = replace(record.cost, forecast_wall_s=walls[record.name])
    for name, cost in teacher_costs.items():
        if f"teacher {name}" in walls:
            teacher_costs[name] = replace(cost, forecast_wall_s=walls[f"teacher {name}"])


def _study_context(
    cfg: StudyConfig,
    groups_path: Path,
    tracking_uri: str,
    experiment_id: str,
    parent_id: str,
    token: StorageToken,
) -> dict[str, Any]:
    """What every trial gets besides its plan (plain data: it crosses into Tune's workers)."""
    return {
        "name": cfg.name,
        "tracking_uri": tracking_uri,
        "experiment_id": experiment_id,
        "parent_run_id": parent_id,
        "groups_path": str(groups_path),
        "eval": cfg.eval.model_dump(mode="json"),
        "storage_token": token.to_dict(),
    }


def _run_trials(
    cfg: StudyConfig,
    plans: list[TrialPlan],
    walls: dict[str, float],
    groups_path: Path,
    ctx: dict[str, Any],
) -> list[TrialRecord]:
    """Every plan's record, in plan order, with its status (its evaluation is added by
    :func:`_add_evaluation`): finished ones reused, the others run on Tune, longest forecast
    wall time (`walls`) first."""
    by_name: dict[str, TrialRecord] = {}
    todo: list[TrialPlan] = []
    identities: dict[str, dict[str, Any]] = {}  # computed once per trial, handed to it
    for plan in plans:
        identity = run_identity(plan.run, groups_path)
        summary = finished_summary(plan.run, groups_path, f"trial {plan.name}", identity)
        if summary is None:
            todo.append(plan)
            identities[plan.name] = identity.to_json()
        else:
            by_name[plan.name] = _reused_trial(cfg, plan, summary, ctx["experiment_id"], ctx["parent_run_id"])
    if by_name:
        log.info("study %s: %d trial(s) reused, %d to run", cfg.name, len(by_name), len(todo))
    if todo:
        order = longest_first(todo, walls)
        by_name.update(_tune_trials(cfg, order, {**ctx, "identities": identities}))
    return [by_name.get(p.name) or _record(p, "error", error="no result from Tune") for p in plans]


def _reused_trial(
    cfg: StudyConfig, plan: TrialPlan, summary: TrialSummary, experiment_id: str, parent_id: str
) -> TrialRecord:
    """The record of a trial reused from its ``run.json``, logged as a child run of this study."""
    tags = child_tags(cfg.name, parent_id, "trial", **plan.tags(), reused="true")
    with logbook.start_run(plan.name, tags=tags, journal=plan.run.run_dir / logbook.TRIAL_JOURNAL):
        logbook.log_params(flatten_params(plan.run.to_dict()))
        logbook.log_metrics(_final_metrics(summary))
    return _record(plan, "ok", reused=True)


def _tune_trials(
    cfg: StudyConfig, plans: list[TrialPlan], study_ctx: dict[str, Any]
) -> dict[str, TrialRecord]:
    """The plans run as a Ray Tune grid; each one's record by name (status and error only)."""
    from ray import tune

    from rerank_ray.heartbeat import heartbeat

    tuner = tune.Tuner(
        tune.with_resources(run_trial, resources={k.lower(): v for k, v in plans[0].resources.items()}),
        param_space={"trial": tune.grid_search([p.to_dict() for p in plans]), "study": study_ctx},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=cfg.tune.max_concurrent_trials,
            trial_name_creator=lambda t: t.config["trial"]["name"],
            trial_dirname_creator=lambda t: t.config["trial"]["name"],
        ),
        run_config=tune.RunConfig(
            name=cfg.name,
            storage_path=str(cfg.study_dir / "tune"),
            failure_config=tune.FailureConfig(max_failures=cfg.tune.max_failures),
        ),
    )
    with heartbeat(f"study {cfg.name}", waiting_on=f"Tune trials (`ray status`; {cfg.study_dir / 'tune'})"):
        grid = tuner.fit()
    plan_of = {p.name: p for p in plans}
    by_name: dict[str, TrialRecord] = {}
    for result in grid:
        name = result.config["trial"]["name"]
        error = None if result.error is None else f"{type(result.error).__name__}: {result.error}"
        by_name[name] = _record(plan_of[name], "ok" if error is None else "error", error=error)
    return by_name


def _evaluation_record(evaluation: EvalSummary | TrialSummary, cfg: StudyConfig) -> EvalRecord:
    """The report's record of an evaluation: its scores and each suite's per-query values."""
    return EvalRecord(
        scores=dict(evaluation.scores),
        per_query={
            s: read_per_query(evaluation.eval_dir / f"{s}.per_query.tsv", cfg.eval.measure)
            for s in cfg.eval.suites
        },
    )


def _keys(record: EvalRecord, cfg: StudyConfig) -> dict[str, float]:
    from rerank_ray.evaluation.metrics import mlflow_key

    return {mlflow_key(suite, cfg.eval.measure): value for suite, value in record.scores.items()}


def _record(plan: TrialPlan, status: str, *, error: str | None = None, reused: bool = False) -> TrialRecord:
    """`plan`'s trial record with its status; :func:`_add_evaluation` adds what it produced."""
    return TrialRecord(
        plan.name, plan.strategy, plan.student, plan.teacher, plan.seed, status, error=error, reused=reused
    )


def _add_evaluation(cfg: StudyConfig, plan: TrialPlan, record: TrialRecord) -> None:
    """An ok trial's evaluation, cost and final metrics, read from its ``run.json``; an ok
    trial without one becomes an error (the report lists it)."""
    run_dir = Path(plan.run.output_dir) / plan.name
    summary = read_summary(run_dir) if record.status == "ok" else None
    if summary is not None:
        record.eval = _evaluation_record(summary, cfg)
        record.cost = summary.cost
        record.metrics = _final_metrics(summary)
    elif record.status == "ok":
        record.status, record.error = "error", f"finished without an evaluation in {run_dir / RECORD}"


def _final_metrics(summary: TrialSummary) -> dict[str, float]:
    """What a finished trial reports (``run_trial``) and logs to its MLflow run at the end."""
    return numeric({**summary.metrics, **cost_metrics(summary.cost)})
