"""The study's teacher stage: each teacher the plan uses, once, behind one typed result.

:func:`run_teacher_stage` trains or loads every teacher the trials use, evaluates it on the
study's suites, scores the shared groups with it (``teacher/score.py``: resumable, reused when
up to date) and measures its targets (``teacher/diagnostics.py``), each teacher in its own MLflow
child run; it returns a :class:`TeacherStage` (per teacher: its evaluation, cost and what the
report says of it). The kinds (specs in ``teacher/specs.py``):

- ``cross_encoder`` trained by the study (contrastively, on the groups; reused when a finished
  run had the same inputs), or cross-fitted (``cross_fit: k``: k fold teachers, each scoring
  the fold it did not train on, ``teacher/crossfit.py``), or given (a saved folder or a
  published reranker), evaluated as it is;
- ``bi_encoder``: a zero-shot bi-encoder, evaluated as it is;
- ``scores``: a precomputed score file, imported (no model to evaluate);
- ``best_of``: the candidate teacher with the best score on held-out training queries
  (``teacher/select.py``), whose scores and evaluation it takes.

A ready teacher (one the study does not train: a bi-encoder, a given reranker, any new kind)
takes one path here, through its spec's ``scorer``, ``params`` and ``describe``
(``teacher/specs.py``); what differs by model family is ``TeacherModel``'s (``teacher/config.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rerank_ray.study import logbook
from rerank_ray.study.config import (
    BestOfTeacher,
    BiEncoderTeacher,
    CrossEncoderTeacher,
    ScoresTeacher,
    StudyConfig,
)
from rerank_ray.study.plan import TrialPlan, teacher_scores_dir, teachers_used
from rerank_ray.study.records import Cost, EvalRecord, EvalSummary, TeacherInfo, TrialSummary
from rerank_ray.study.tracking import child_tags, numeric
from rerank_ray.study.trial import (
    cost_metrics,
    evaluate_suites,
    evaluation_record,
    finished_summary,
    measure_keys,
    train_and_evaluate,
)
from rerank_ray.teacher.config import TeacherModel
from rerank_ray.train.identity import run_identity


@dataclass
class TeacherStage:
    """What the study's teachers hand the report, per teacher name: the evaluation (none for a
    scores teacher, which has no model), the cost, and what the report says of it."""

    records: dict[str, EvalRecord] = field(default_factory=dict)
    costs: dict[str, Cost] = field(default_factory=dict)
    info: dict[str, TeacherInfo] = field(default_factory=dict)


def run_teacher_stage(
    cfg: StudyConfig, plans: list[TrialPlan], groups_path: Path, experiment_id: str, parent_id: str
) -> TeacherStage:
    """Each teacher the plans use, once: trained or loaded, evaluated, scoring the groups,
    its targets measured."""
    teachers = TeacherStage()
    for name in teachers_used(plans):
        record, teachers.costs[name] = teacher(cfg, name, groups_path, experiment_id, parent_id)
        teachers.info[name] = teacher_info(cfg, name, groups_path)
        if record is not None:  # a scores teacher has no model to evaluate
            teachers.records[name] = record
            logbook.log_metrics({f"teacher/{name}/{k}": v for k, v in measure_keys(record, cfg.eval).items()})
    return teachers


def teacher(
    cfg: StudyConfig, name: str, groups_path: Path, experiment_id: str, parent_id: str
) -> tuple[EvalRecord | None, Cost]:
    """Train (or load) teacher `name`, evaluate it and score the groups with it, in a child run.
    A scores teacher has no model to evaluate: its record is None."""
    spec = cfg.teachers[name]
    if isinstance(spec, CrossEncoderTeacher) and spec.cross_fit is not None:
        return _cross_fit_teacher(cfg, name, groups_path, experiment_id, parent_id)
    if isinstance(spec, BestOfTeacher):
        return _best_of_teacher(cfg, name, spec, groups_path, experiment_id, parent_id)
    tags = child_tags(cfg.name, parent_id, "teacher", teacher=name, kind=spec.kind)
    # experiment_id is explicit: a nested run does not inherit its parent's experiment.
    with logbook.start_run(f"teacher-{name}", tags=tags):
        if isinstance(spec, ScoresTeacher):
            return None, given_scores(spec, groups_path, teacher_scores_dir(cfg, name))
        if isinstance(spec, CrossEncoderTeacher) and spec.trains:
            scorer, evaluation, cost = _trained_teacher(cfg, name, groups_path)
        else:
            scorer, evaluation, cost = _ready_teacher(cfg, name, spec)
        cost = _score_groups(cfg, name, scorer, groups_path, cost)
    return evaluation_record(evaluation, cfg.eval), cost


def _best_of_teacher(
    cfg: StudyConfig, name: str, spec: BestOfTeacher, groups_path: Path, experiment_id: str, parent_id: str
) -> tuple[EvalRecord | None, Cost]:
    """Choose among the candidates on held-out training queries (``teacher/select.py``) in this
    teacher's child run, then run the chosen one as a teacher (its own child run: evaluation and
    scoring, reused when up to date) and take its scores and evaluation as this teacher's."""
    from rerank_ray import io
    from rerank_ray.evaluation.metrics import mlflow_key
    from rerank_ray.teacher.select import choose

    tags = child_tags(cfg.name, parent_id, "teacher", teacher=name, kind=spec.kind)
    with logbook.start_run(f"teacher-{name}", tags=tags):
        models = {c: _candidate_model(cfg, c, groups_path) for c in spec.candidates}
        selection = choose(cfg, name, spec, models)
        logbook.log_params({"teacher.chosen": selection.chosen, "teacher.selection_suite": spec.suite})
        # selection/<candidate>/<suite>/<measure>, in MLflow's key alphabet (mlflow_key).
        measure = mlflow_key(spec.suite, selection.measure)
        logbook.log_metrics({f"selection/{c}/{measure}": v for c, v in selection.scores.items()})
    record, cost = teacher(cfg, selection.chosen, groups_path, experiment_id, parent_id)
    io.copy_tree(teacher_scores_dir(cfg, selection.chosen), teacher_scores_dir(cfg, name))
    return record, cost


def _candidate_model(cfg: StudyConfig, name: str, groups_path: Path) -> TeacherModel:
    """A best_of candidate as a model to evaluate: a bi-encoder's scorer, a given reranker's
    folder, or a study-trained teacher's folder (trained now, or reused)."""
    spec = cfg.teachers[name]
    assert (
        isinstance(spec, BiEncoderTeacher | CrossEncoderTeacher) and getattr(spec, "cross_fit", None) is None
    )
    if isinstance(spec, CrossEncoderTeacher) and spec.trains:
        return _trained_teacher(cfg, name, groups_path)[0]
    return spec.scorer(cfg.study_dir / "teachers" / name)


def _trained_teacher(
    cfg: StudyConfig, name: str, groups_path: Path
) -> tuple[TeacherModel, TrialSummary, Cost]:
    """A study-trained cross-encoder: trained contrastively on the groups and evaluated
    (``train_and_evaluate``), or reused when a finished run had the same inputs."""
    run = cfg.teacher_run(name)
    identity = run_identity(run, groups_path)  # once: the reuse check and the training share it
    summary = finished_summary(run, groups_path, f"teacher {name}", identity)
    if summary is None:
        summary = train_and_evaluate(
            run, groups_path=groups_path, eval_cfg=cfg.eval, trial_cpus=0.0, trial_gpus=0.0, identity=identity
        )
    else:
        logbook.set_tag("reused", "true")
        logbook.log_metrics(summary.metrics)
    return TeacherModel(kind="cross_encoder", path=str(summary.model_dir)), summary, summary.cost


def _ready_teacher(
    cfg: StudyConfig, name: str, spec: BiEncoderTeacher | CrossEncoderTeacher
) -> tuple[TeacherModel, EvalSummary, Cost]:
    """A teacher used as it is (a zero-shot bi-encoder, a saved or published reranker imported
    into ``teachers/<name>/``), evaluated; it costs nothing to train."""
    scorer = spec.scorer(cfg.study_dir / "teachers" / name)
    logbook.log_params(spec.params())
    return scorer, _evaluate_teacher(cfg, name, scorer), Cost()


def _evaluate_teacher(cfg: StudyConfig, name: str, model: TeacherModel) -> EvalSummary:
    """A teacher that is not trained here, evaluated on every suite into ``teachers/<name>/eval``
    (reused while the teacher's files, the evaluation config and the data are unchanged:
    ``study/reuse.py``) and logged to its (active) run."""
    from rerank_ray.study import reuse
    from rerank_ray.teacher.provenance import teacher_content

    out_dir = cfg.study_dir / "teachers" / name / "eval"
    key = reuse.evaluation_key(teacher_content(model), cfg.eval, cfg.base.data)
    evaluation = reuse.reusable(out_dir, key, f"teacher {name}")
    if evaluation is None:
        reuse.forget(out_dir)
        evaluation = evaluate_suites(
            model, cfg.eval, out_dir, root=cfg.base.data.root, tag=name, data=cfg.base.data
        )
        reuse.remember(out_dir, key)
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


def teacher_info(cfg: StudyConfig, name: str, groups_path: Path) -> TeacherInfo:
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
    if isinstance(spec, BestOfTeacher):
        from rerank_ray.teacher.select import selection_info

        return selection_info(cfg, name, spec, diagnostics)
    if not (isinstance(spec, CrossEncoderTeacher) and spec.trains):
        return TeacherInfo(None, spec.describe(), diagnostics)
    if spec.cross_fit is not None:
        evaluates = (
            f"the mean of the {spec.cross_fit} cross-fit fold teachers (each trained on "
            f"{spec.cross_fit - 1}/{spec.cross_fit} of the training queries; together they scored the groups)"
        )
    else:
        evaluates = "the teacher trained on every training group (the groups it scored)"
    from rerank_ray.models.sources import comparable_size

    return TeacherInfo(comparable_size(cfg.teacher_run(name).model), evaluates, diagnostics)


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

    run = cfg.teacher_run(name, fold)
    fold_dir = Path(run.output_dir) / run.name
    train_groups, scored_groups = crossfit.split_groups(groups_path, folds, fold, fold_dir / "groups")
    tags = child_tags(cfg.name, parent_id, "teacher_fold", teacher=name, fold=str(fold))
    identity = run_identity(run, train_groups)  # once: reuse check, training and the fold record
    with logbook.start_run(run.name, tags=tags):
        summary = finished_summary(
            run, train_groups, f"teacher {name} fold {fold}", identity
        ) or train_and_evaluate(
            run,
            groups_path=train_groups,
            eval_cfg=cfg.eval,
            trial_cpus=0.0,
            trial_gpus=0.0,
            identity=identity,
        )
        scorer = TeacherModel(kind="cross_encoder", path=str(summary.model_dir))
        scores = score_groups(scored_groups, scorer, fold_dir / "scores", scoring=cfg.scoring)
    record = crossfit.fold_record(
        fold, train_groups, scored_groups,
        run_fingerprint=identity.fingerprint, score_manifest=scores.manifest,
        model_dir=str(summary.model_dir), scores_dir=str(scores.path),
    )  # fmt: skip
    return record, evaluation_record(summary, cfg.eval), summary.cost.with_scoring(scores.manifest["cost"])


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
