"""``rerank-ray study <file.yaml>``: teachers once, teacher scores once, a Tune grid, a report.

``run_study(cfg)`` runs, in the driver:

0. the plan (``plan_study``; every name was checked when the config loaded), a local Ray
   (``tune.num_cpus`` logical CPUs) unless ``$RAY_ADDRESS`` names a cluster, the check that
   every alive node sees the study folder (``cluster.check_nodes``: on a cluster it must be on
   shared storage, ``$RERANK_RAY_STORAGE``), the MLflow experiment and the study's parent run;
1. the training groups, built once from ``base`` and shared by every teacher and trial (so the
   only differences between trials are the grid's axes), and the first-stage evaluation;
2. the teacher stage (``teacher/stage.py``): each teacher the plan uses, once: a study-trained
   cross-encoder is trained contrastively
   (a child run, ``role=teacher``) and evaluated; a given checkpoint or a bi-encoder is only
   evaluated, and that evaluation is reused while the teacher's files, the evaluation config and
   the data are unchanged (``study/reuse.py``). A teacher trained earlier under the study folder
   with the same inputs (config, groups content, base weights: ``train/identity.py``) is reused;
   the log says which changed.
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
   (``study/trial.py``), at most ``tune.max_concurrent_trials`` at a time; a failed trial is
   recorded and the others go on. Reuse is decided here, in the driver, rather than inside the
   trainable: the driver already has every input hashed, and a reused trial then costs no
   trial process, no Ray resources, and no wait behind ``max_concurrent_trials``;
5. the report (``study/report.py``), written to ``<study>/report/`` and logged to the parent run.

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
from rerank_ray.console import route_library_logs, stdout_to_log
from rerank_ray.io import write_json, write_yaml
from rerank_ray.ray_runtime import run_need, scoring_need, start_ray
from rerank_ray.study import logbook
from rerank_ray.study.config import (
    StudyConfig,
    load_study,
)
from rerank_ray.study.forecast import ForecastError, StudyForecast, ThroughputTable, forecast_study
from rerank_ray.study.plan import TrialPlan, longest_first, plan_study
from rerank_ray.study.progress import Progress, tune_callback
from rerank_ray.study.records import Cost, EvalRecord, TrialRecord, TrialSummary
from rerank_ray.study.report import Report, build_report
from rerank_ray.study.tracking import (
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
from rerank_ray.study.trial import (
    cost_metrics,
    evaluate_suites,
    evaluation_record,
    finished_summary,
    measure_keys,
    read_summary,
    run_trial,
)
from rerank_ray.teacher.stage import TeacherStage, run_teacher_stage
from rerank_ray.train.identity import run_identity
from rerank_ray.train.record import RECORD

if TYPE_CHECKING:
    from rerank_ray.study.registry import Registered

__all__ = ["StudyResult", "TrialRecord", "load_study", "plan_study", "run_study"]

log = logging.getLogger("rerank_ray.study")


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
    # The best student of each strategy, registered under the study's name (study/registry.py).
    registered: list[Registered] = field(default_factory=list)


def run_study(cfg: StudyConfig, *, command: str | None = None) -> StudyResult:
    """Run the study `cfg` (the module docstring's steps 0-5); `command` is quoted in the report."""
    import mlflow

    # 0. The plan, the study folder, the forecast, Ray and the MLflow experiment.
    plans = plan_study(cfg)
    tracking_uri = resolve_tracking_uri(cfg.base.mlflow)
    check_tracking_server(tracking_uri)  # seconds, before anything starts
    forecast, token = _prepare(cfg, plans)
    experiment_id = ensure_experiment(tracking_uri, cfg.base.mlflow.experiment)
    route_library_logs()  # MLflow's store set its console handler up just now
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
        teachers = run_teacher_stage(cfg, plans, groups_path, experiment_id, parent_id)
        # 4. The trials: reused when finished with the same inputs, the rest on Ray Tune.
        walls = forecast.walls() if forecast else {}
        ctx = _study_context(cfg, groups_path, tracking_uri, experiment_id, parent_id, token)
        records = _run_trials(cfg, plans, walls, groups_path, ctx)
        for plan, record in zip(plans, records, strict=True):
            _add_evaluation(cfg, plan, record)
        _add_forecast(walls, records, teachers.costs)
        # 5. The report, and the best student of each strategy registered.
        report = _report(cfg, records, first_stage, teachers, command)
        from rerank_ray.study.registry import register_best

        with stdout_to_log("mlflow.registry"):  # MLflow prints its registration lines
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
    record = evaluation_record(evaluation, cfg.eval)
    logbook.log_metrics({f"first_stage/{k}": v for k, v in measure_keys(record, cfg.eval).items()})
    return record


def _report(
    cfg: StudyConfig,
    records: list[TrialRecord],
    first_stage: EvalRecord,
    teachers: TeacherStage,
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
        by_name.update(_tune_trials(cfg, order, {**ctx, "identities": identities}, walls))
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
    cfg: StudyConfig, plans: list[TrialPlan], study_ctx: dict[str, Any], walls: dict[str, float]
) -> dict[str, TrialRecord]:
    """The plans run as a Ray Tune grid; each one's record by name (status and error only).
    The console gets a line per trial state change (``study/progress.py``), not Tune's table."""
    from ray import tune

    from rerank_ray.console import ray_to_console
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
            callbacks=[tune_callback(_progress(cfg, plans, walls))],
            verbose=None if ray_to_console() else 0,
        ),
    )
    with (
        stdout_to_log("ray.tune.output"),
        heartbeat(f"study {cfg.name}", waiting_on=f"Tune trials (`ray status`; {cfg.study_dir / 'tune'})"),
    ):
        grid = tuner.fit()
    plan_of = {p.name: p for p in plans}
    by_name: dict[str, TrialRecord] = {}
    for result in grid:
        name = result.config["trial"]["name"]
        error = None if result.error is None else f"{type(result.error).__name__}: {result.error}"
        by_name[name] = _record(plan_of[name], "ok" if error is None else "error", error=error)
    return by_name


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
        record.eval = evaluation_record(summary, cfg.eval)
        record.cost = summary.cost
        record.metrics = _final_metrics(summary)
    elif record.status == "ok":
        record.status, record.error = "error", f"finished without an evaluation in {run_dir / RECORD}"


def _final_metrics(summary: TrialSummary) -> dict[str, float]:
    """What a finished trial reports (``run_trial``) and logs to its MLflow run at the end."""
    return numeric({**summary.metrics, **cost_metrics(summary.cost)})


def _progress(cfg: StudyConfig, plans: list[TrialPlan], walls: dict[str, float]) -> Progress:
    """The console's trial lines: a done trial shows the study's measure on its first
    in-domain suite (else its first suite)."""
    from rerank_ray.evaluation.metrics import mlflow_key

    suite = (cfg.eval.in_domain or cfg.eval.suites)[0]
    return Progress(
        names=[p.name for p in plans], walls=walls, concurrency=cfg.tune.max_concurrent_trials,
        headline=mlflow_key(suite, cfg.eval.measure), label=f"{suite} {cfg.eval.measure}",
    )  # fmt: skip
