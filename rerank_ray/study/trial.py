"""One trial: train a reranker (Ray Train), evaluate it on the study's suites, log it to MLflow.

``run_trial(config)`` is the Ray Tune function trainable. Under Ray 2.x with Train V2, Tune
runs a *function* that calls ``train()`` (which starts its own ``TorchTrainer``), rather than
taking a trainer directly. Its ``config`` is plain data: ``{"trial": TrialPlan.to_dict(),
"study": {...}}``; everything is rebuilt from it.

Files, under ``<study>/trials/<trial>/`` (the ``train()`` run folder): ``model/``, ``ray/``,
``history.json``, ``mlflow_run.json`` (its MLflow child run), ``eval/`` (``<suite>.run``, ``<suite>.per_query.tsv``, ``metrics.json`` per
depth group, ``eval.json`` for all suites: an ``EvalSummary``) and ``run.json``, the run's one
finished record (``train/record.py``): ``train()`` writes its training part, and the trial
extends it with the ``TrialSummary`` the study and the report read (``study/records.py``). Its
``identity`` is the run's content identity (``train/identity.py``), computed once per trial by
the study and handed to the trial; :func:`finished_summary`
reuses a trial (or a study teacher) only when it matches the identity of the run as configured
now.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import yaml

from rerank_ray.config import DataConfig, RunConfig
from rerank_ray.io import write_json
from rerank_ray.study import logbook
from rerank_ray.study.config import StudyEvalConfig
from rerank_ray.study.plan import TrialPlan
from rerank_ray.study.records import Cost, EvalRecord, EvalSummary, TrialSummary
from rerank_ray.study.report import read_per_query
from rerank_ray.study.tracking import child_tags, flatten_params, numeric, redact_config
from rerank_ray.teacher.config import TeacherModel
from rerank_ray.train.identity import RunIdentity, run_identity
from rerank_ray.train.record import extend_record, read_record, unfinish

log = logging.getLogger("rerank_ray.study")


def evaluate_suites(
    model: str | TeacherModel | None,
    eval_cfg: StudyEvalConfig,
    out_dir: Path,
    *,
    root: Path | None,
    tag: str | None = None,
    data: DataConfig | None = None,
) -> EvalSummary:
    """Evaluate a saved reranker folder (str), a bi-encoder teacher, or the first stage (None)
    on every suite, one ``evaluate`` call per rerank depth. Writes ``eval.json``.
    `data` (the training data config) is what the ``validation`` suite evaluates."""
    from rerank_ray.evaluation.evaluate import evaluate

    by_depth: dict[int | None, list[str]] = {}
    for suite in eval_cfg.suites:
        by_depth.setdefault(eval_cfg.depth.get(suite), []).append(suite)
    metrics: dict[str, float] = {}
    scores: dict[str, float] = {}
    for depth, suites in by_depth.items():
        result = evaluate(
            model,
            suites,
            depth=depth,
            batch_size=eval_cfg.batch_size,
            out_dir=out_dir,
            root=root,
            tag=tag,
            run_files={k: str(v) for k, v in eval_cfg.run_files.items()},
            data=data,
            suites_defined=eval_cfg.defined(),
        )
        metrics.update(result.metrics)
        scores.update({suite: result.suites[suite][eval_cfg.measure] for suite in suites})
    summary = EvalSummary(metrics=metrics, scores=scores, measure=eval_cfg.measure, eval_dir=out_dir)
    write_json(out_dir / "eval.json", summary.to_json())
    return summary


def finished_summary(
    cfg: RunConfig, groups_path: Path, what: str, identity: RunIdentity | None = None
) -> TrialSummary | None:
    """The summary of `cfg`'s finished trial (its ``run.json`` with an evaluation) when its
    inputs were the same as now (config, groups content, teacher scores, base weights: its
    `identity`, computed here unless given) and its model still exists; else None. Logs which
    input changed."""
    from rerank_ray.train.driver import same_inputs

    run_dir = Path(cfg.output_dir).resolve() / cfg.name
    summary = read_summary(run_dir)
    if summary is None:
        return None
    if not summary.model_dir.is_dir():
        log.info("%s: training again, its model %s is gone", what, summary.model_dir)
        return None
    identity = identity or run_identity(cfg, groups_path)
    return summary if same_inputs(summary.identity, identity, what, run_dir) else None


def read_summary(run_dir: Path) -> TrialSummary | None:
    """The finished trial's summary from the record in `run_dir` (``train/record.py``), or None
    when the run has not finished its evaluation."""
    record = read_record(run_dir)
    return TrialSummary.from_json(record) if record is not None and "scores" in record else None


def train_and_evaluate(
    cfg: RunConfig,
    *,
    groups_path: Path,
    eval_cfg: StudyEvalConfig,
    trial_cpus: float,
    trial_gpus: float,
    identity: RunIdentity | None = None,
) -> TrialSummary:
    """Train `cfg`, evaluate the model, log both to the active MLflow run, and extend the run's
    record (``run.json``) with the evaluation. `trial_cpus`/`trial_gpus`: what the trial process
    itself holds, for the cost; `identity`: the run's, when the caller computed it already."""
    from rerank_ray.train.driver import train

    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    # Not finished until this call ends: a failure below (a full disk) must not leave an older
    # evaluation in the record to vouch for a model or evaluation this call replaced.
    unfinish(run_dir)
    _log_run_config(cfg)
    t0 = time.perf_counter()
    result = train(cfg, groups_path=groups_path, identity=identity)
    train_s = time.perf_counter() - t0
    for record in result.history:
        logbook.log_metrics(
            {f"train/{k}": v for k, v in numeric(record).items()}, step=int(record.get("step", 0))
        )
    evaluation = evaluate_suites(
        str(result.model_dir), eval_cfg, run_dir / "eval", root=cfg.data.root, tag=cfg.name, data=cfg.data
    )
    cost = _trial_cost(cfg, train_s, time.perf_counter() - t0, result.metrics, trial_cpus, trial_gpus)
    logbook.log_metrics(evaluation.metrics)
    logbook.log_metrics(cost_metrics(cost))
    logbook.log_artifacts(str(evaluation.eval_dir), "eval")
    summary = TrialSummary(
        name=cfg.name,
        metrics=evaluation.metrics,
        scores=evaluation.scores,
        cost=cost,
        model_dir=result.model_dir,
        eval_dir=evaluation.eval_dir,
        run_config=cfg.to_dict(),
        identity=result.identity,
    )
    extend_record(run_dir, summary.to_json())
    return summary


def _log_run_config(cfg: RunConfig) -> None:
    """The run's parameters, its config (secrets redacted) and its teacher scores' manifest."""
    logbook.log_params(flatten_params(cfg.to_dict()))
    logbook.log_text(yaml.safe_dump(redact_config(cfg.to_dict()), sort_keys=False), "config/run_config.yaml")
    if cfg.train.teacher_scores is not None:
        logbook.log_artifact(str(Path(cfg.train.teacher_scores).parent / "manifest.json"), "teacher_scores")


def _trial_cost(
    cfg: RunConfig,
    train_s: float,
    wall_s: float,
    train_metrics: dict[str, Any],
    trial_cpus: float,
    trial_gpus: float,
) -> Cost:
    """Train workers for the training time, plus the trial process for the whole trial; the
    training's throughput and checkpoints from its final metrics (`train_metrics`)."""
    scaling = cfg.scaling
    worker_gpus = scaling.num_workers * scaling.gpus_per_worker if scaling.use_gpu else 0.0
    return Cost(
        wall_s=wall_s,
        train_wall_s=train_s,
        pairs_per_s=train_metrics.get("pairs_per_s"),
        checkpoints=train_metrics.get("checkpoints"),
        checkpoint_s=train_metrics.get("checkpoint_s"),
        cpu_hours=(train_s * scaling.num_workers * scaling.cpus_per_worker + wall_s * trial_cpus) / 3600,
        gpu_hours=(train_s * worker_gpus + wall_s * trial_gpus) / 3600,
    )


def cost_metrics(cost: Cost) -> dict[str, float]:
    """`cost` as MLflow / Ray Tune metrics: ``cost/<field>`` for each measured field."""
    return {f"cost/{k}": v for k, v in numeric(cost.to_json()).items()}


def run_trial(config: dict[str, Any]) -> None:
    """Ray Tune function trainable: one (strategy, student, teacher, seed) trial.

    It first checks that its node sees the study's storage (the token the study wrote; a node
    the autoscaler added after the study's check is checked here), so a trial on a node
    without it fails at once, before it trains. A retry of the trial (``tune.max_failures``,
    e.g. after its node was lost) logs to the same MLflow child run, and Ray Train resumes its
    training from the last checkpoint on the shared storage."""
    from ray import tune

    from rerank_ray.cluster import StorageToken, verify_token

    study = config["study"]
    verify_token(StorageToken.from_dict(study["storage_token"]), f"trial {config['trial']['name']}")
    plan = TrialPlan.from_dict(config["trial"])
    eval_cfg = StudyEvalConfig.model_validate(study["eval"])
    run = _trial_mlflow_run(plan, study)
    status = "FAILED"
    try:
        with logbook.active(run, end=False):
            summary = train_and_evaluate(
                plan.run,
                groups_path=Path(study["groups_path"]),
                eval_cfg=eval_cfg,
                trial_cpus=plan.resources.get("CPU", 0.0),
                trial_gpus=plan.resources.get("GPU", 0.0),
                identity=RunIdentity.from_json(study.get("identities", {}).get(plan.name)),
            )
        tune.report({**summary.metrics, **cost_metrics(summary.cost)})
        status = "FINISHED"
    finally:
        logbook.end_run(run, status)


def _trial_mlflow_run(plan: TrialPlan, study: dict[str, Any]) -> logbook.RunLog:
    """The trial's MLflow child run (``<trial>/mlflow_run.json``, ``study/logbook.py``), or the
    same run when this is a retry of the trial under the same study run: one child run per
    trial, however many attempts it took."""
    import mlflow

    mlflow.set_tracking_uri(study["tracking_uri"])
    logbook.bound_retries()
    journal = plan.run.run_dir / logbook.TRIAL_JOURNAL
    if journal.is_file():
        earlier = logbook.RunLog.read(journal, study["tracking_uri"])
        if earlier.create["tags"].get(logbook.PARENT_TAG) == study["parent_run_id"]:
            log.info("trial %s: a retry; resuming its MLflow run %s", plan.name, earlier.ref)
            return earlier
    return logbook.new_run(
        journal, study["tracking_uri"], experiment_id=study["experiment_id"], run_name=plan.name,
        tags=child_tags(study["name"], study["parent_run_id"], "trial", **plan.tags()),
    )  # fmt: skip


def evaluation_record(evaluation: EvalSummary | TrialSummary, eval_cfg: StudyEvalConfig) -> EvalRecord:
    """The report's record of an evaluation: its scores and each suite's per-query values."""
    return EvalRecord(
        scores=dict(evaluation.scores),
        per_query={
            s: read_per_query(evaluation.eval_dir / f"{s}.per_query.tsv", eval_cfg.measure)
            for s in eval_cfg.suites
        },
    )


def measure_keys(record: EvalRecord, eval_cfg: StudyEvalConfig) -> dict[str, float]:
    """The record's scores under their MLflow keys (``<suite>/<measure>``)."""
    from rerank_ray.evaluation.metrics import mlflow_key

    return {mlflow_key(suite, eval_cfg.measure): value for suite, value in record.scores.items()}
