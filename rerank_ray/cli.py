"""`rerank-ray <verb>`: parse the command line, call one library function, say where results went.

Verbs and the function each one wraps:

=========  ==========================================================================
prepare    ``data.groups.build_groups``: training groups as Parquet
train      ``train.driver.train`` (groups if needed, DeepSpeed training, HF export), then
           ``evaluation.evaluate.evaluate`` on ``eval.suites`` unless ``--no-eval``
evaluate   ``evaluation.evaluate.evaluate``: a saved model, or ``--first-stage`` (BM25)
score      ``teacher.score.score_groups``: teacher scores for a groups file
study      ``study.run.run_study`` (``--dry-run``: ``study.plan.plan_study`` + ``study.forecast``)
ui         ``mlflow server`` on 127.0.0.1 over the project's tracking store
=========  ==========================================================================

Config verbs take ``-c/--config FILE`` (repeatable; later files override earlier ones key by
key) and trailing arguments, each either a YAML file (stacked after the ``-c`` files) or a
``dotted.key=value`` override, applied last. Library modules are imported inside each verb, so
``rerank-ray --help`` stays fast and works while a heavy optional dependency is missing.

Every verb ends with a summary (``rerank_ray.console.Summary``). Errors print one line and the
fix; the full traceback goes to the log file the message names; the exit code is 1 (also for a
study with a failed trial, after its summary), 130 on Ctrl-C, 2 for a command-line usage error.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rerank_ray.console import Summary, default_log_dir, report_error, setup_logging
from rerank_ray.stopping import stop_on_sigterm, stop_reason
from rerank_ray.study.tracking import MLFLOW_UI_PORT, mlflow_lines, mlflow_server_command, pending_runs

if TYPE_CHECKING:
    from rerank_ray.config import RunConfig

log = logging.getLogger("rerank_ray.cli")

# ---------------------------------------------------------------------------------------------
# Config arguments shared by the config verbs.


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-c",
        "--config",
        action="append",
        default=[],
        metavar="FILE",
        help="YAML config; repeat to stack (later files override earlier ones key by key)",
    )
    p.add_argument(
        "args",
        nargs="*",
        metavar="FILE | key=value",
        help="more YAML files, then dotted overrides such as train.epochs=2 loss.name=distillation",
    )


def add_force_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--force",
        action="store_true",
        help="replace finished outputs of another config (or a study/run) under the same name",
    )


def split_config_args(args: argparse.Namespace) -> tuple[list[Path], list[str]]:
    """``-c`` files, then trailing files, in order; trailing ``key=value`` items as overrides."""
    paths = [Path(p) for p in args.config]
    overrides = []
    for item in args.args:
        if "=" in item:
            overrides.append(item)
        else:
            paths.append(Path(item))
    return paths, overrides


def load_run_config(args: argparse.Namespace) -> RunConfig:
    from rerank_ray.config import load_config

    paths, overrides = split_config_args(args)
    return load_config(paths, overrides)


def describe_run(cfg: RunConfig) -> str:
    where = f"{cfg.scaling.num_workers} {'GPU' if cfg.scaling.use_gpu else 'CPU'} worker(s)"
    return (
        f"{cfg.name}: {cfg.model.family} {cfg.model.source}"
        + (f" ({cfg.model.num_layers} layers)" if cfg.model.num_layers else "")
        + f", {cfg.loss.name} loss, {where}, DeepSpeed ZeRO-{cfg.deepspeed.zero_stage}"
    )


def suites_override(suites: list[str] | None) -> list[str]:
    """``--suite a --suite b`` as a config override, so suite names are validated by the config."""
    return [f"eval.suites=[{','.join(suites)}]"] if suites else []


# ---------------------------------------------------------------------------------------------
# Verbs. Each fills `summary` and returns; errors propagate to `main`.


def claim_run(cfg: RunConfig, args: argparse.Namespace) -> AbstractContextManager[Path]:
    """Lock ``<output_dir>/<name>`` and check this config may write it (``--force``: replace)."""
    from rerank_ray.outputs import FINISHED, claim_outputs, run_identity

    return claim_outputs(cfg.run_dir, run_identity(cfg.to_dict()), force=args.force, finished=FINISHED)


def cmd_prepare(args: argparse.Namespace, summary: Summary) -> None:
    from rerank_ray.data.groups import build_groups
    from rerank_ray.outputs import output_lock

    cfg = load_run_config(args)
    if args.out:
        with output_lock(Path(args.out)):
            result = build_groups(cfg, Path(args.out))
    else:
        with claim_run(cfg, args):
            result = build_groups(cfg, cfg.run_dir / "groups")
    summary.ran.append(
        f"training groups for {cfg.name} from {', '.join(cfg.data.train)} "
        f"(split {cfg.data.train_split}, group_size {cfg.groups.group_size})"
    )
    summary.ran.append(result.stats.summary())
    summary.outputs["groups"] = str(result.path)


def cmd_train(args: argparse.Namespace, summary: Summary) -> None:
    args.args = [*args.args, *suites_override(args.suite)]
    cfg = load_run_config(args)
    with claim_run(cfg, args):
        _train_then_evaluate(cfg, args, summary)


def _train_then_evaluate(cfg: RunConfig, args: argparse.Namespace, summary: Summary) -> None:
    from rerank_ray.train.driver import train

    result = train(cfg, groups_path=Path(args.groups) if args.groups else None)
    summary.ran.append("trained " + describe_run(cfg))
    for key in ("loss", "step", "epoch", "pairs_per_s"):
        if key in result.metrics:
            summary.metrics[key] = result.metrics[key]
    summary.outputs["model"] = str(result.model_dir)
    summary.outputs["groups"] = str(result.groups_path)
    summary.mlflow.append(
        "not logged: `rerank-ray train` writes files only; `rerank-ray study` logs to MLflow"
    )
    if args.no_eval:
        return
    eval_dir = Path(result.model_dir).parent / "eval"
    evaluated = evaluate_config(cfg, str(result.model_dir), eval_dir, label=cfg.name)
    summary.ran.append(f"evaluated on {', '.join(cfg.eval.suites)}")
    summary.metrics.update(evaluated.metrics)
    summary.outputs["eval"] = str(eval_dir)


def evaluate_config(cfg: RunConfig, model: str | None, out_dir: Path, *, label: str) -> Any:
    """``evaluate`` on the config's suites, as the train and evaluate verbs both run it: its
    data (validation queries, duplicate handling), defined suites and actor-pool settings."""
    from rerank_ray.config import defined_suites
    from rerank_ray.evaluation.evaluate import evaluate, pool_options
    from rerank_ray.heartbeat import heartbeat

    with heartbeat(f"evaluating {label}", waiting_on="reranking the suites' candidates"):
        return evaluate(
            model,
            list(cfg.eval.suites),
            depth=cfg.eval.depth,
            batch_size=cfg.eval.batch_size,
            out_dir=out_dir,
            root=cfg.data.root,
            data=cfg.data,
            suites_defined=defined_suites(cfg.eval.suites_defined),
            **pool_options(cfg.eval),
        )


def cmd_evaluate(args: argparse.Namespace, summary: Summary) -> None:
    args.args = [*args.args, *suites_override(args.suite)]
    cfg = load_run_config(args)
    if args.out:
        out = Path(args.out)
    elif args.model:
        out = Path(args.model).resolve().parent / "eval"
    else:
        out = cfg.output_dir / "first-stage" / "eval"
    model = None if args.first_stage else str(args.model)
    evaluated = evaluate_config(cfg, model, out, label=args.model or "the first stage")
    what = "the first-stage run" if args.first_stage else f"model {args.model}"
    summary.ran.append(f"evaluated {what} on {', '.join(cfg.eval.suites)}")
    summary.metrics.update(evaluated.metrics)
    summary.outputs["eval"] = str(out)


def score_job_class() -> type:
    """``teacher:`` (a TeacherModel) + ``scoring:`` (the Ray Data job layout): the score verb's YAML."""
    from rerank_ray.config import Section
    from rerank_ray.teacher.config import ScoringConfig, TeacherModel

    class ScoreJob(Section):
        teacher: TeacherModel
        scoring: ScoringConfig = ScoringConfig()

    return ScoreJob


def cmd_score(args: argparse.Namespace, summary: Summary) -> None:
    from rerank_ray.config import load_config
    from rerank_ray.heartbeat import heartbeat
    from rerank_ray.outputs import output_lock
    from rerank_ray.teacher.score import score_groups

    paths, overrides = split_config_args(args)
    job = load_config(paths, overrides, cls=score_job_class())
    # Ray starts only if the job goes to the actor pool (teacher.score._score_on_pool).
    with (
        output_lock(Path(args.out)),
        heartbeat(
            f"scoring {args.groups}",
            waiting_on=f"the scoring job (in process, or {job.scoring.actors} Ray Data actor(s))",
        ),
    ):
        result = score_groups(Path(args.groups), job.teacher, Path(args.out), scoring=job.scoring)
    summary.ran.append(
        f"{'reused' if result.reused else 'computed'} teacher scores for {args.groups} with "
        f"{job.teacher.kind} {job.teacher.path} ({_where(result.manifest, job.scoring.actors)})"
    )
    summary.metrics["pairs"] = result.manifest["count"]
    if not result.reused and result.manifest["cost"]["pairs_per_s"]:
        summary.metrics["pairs_per_s"] = result.manifest["cost"]["pairs_per_s"]
    summary.outputs["scores"] = f"{result.path}  (set train.teacher_scores to this)"


def _where(manifest: dict, actors: int) -> str:
    where = manifest.get("cost", {}).get("where")
    return {"in_process": "in process", "pool": f"{actors} Ray Data actor(s)"}.get(where, "nothing to score")


def cmd_study(args: argparse.Namespace, summary: Summary) -> int:
    from rerank_ray.cluster import fault_tolerance_line
    from rerank_ray.study.config import load_study
    from rerank_ray.study.plan import format_plan, plan_study

    paths, overrides = split_config_args(args)
    study = load_study(paths, overrides)
    plans = plan_study(study)
    if args.dry_run:
        print(format_plan(plans))
        print(dry_run_forecast(study, plans, args.hardware, args.price_per_hour))
        print(fault_tolerance_line(study.base.train, study.tune.max_failures))
        summary.ran.append(
            f"planned study {study.name}: {len(plans)} trial(s), at most "
            f"{study.tune.max_concurrent_trials} at a time; nothing was started (--dry-run)"
        )
        return 0
    from rerank_ray.outputs import FINISHED, claim_outputs, study_identity
    from rerank_ray.study.run import run_study

    with claim_outputs(study.study_dir, study_identity(study.name), force=args.force, finished=FINISHED):
        result = run_study(study, command=" ".join(["rerank-ray", *sys.argv[1:]]))
    statuses: dict[str, int] = {}
    for trial in result.trials:
        statuses[trial.status] = statuses.get(trial.status, 0) + 1
    reused = sum(t.reused for t in result.trials)
    summary.ran.append(
        f"study {study.name}: {len(result.trials)} trial(s), "
        + ", ".join(f"{n} {s}" for s, n in sorted(statuses.items()))
        + (f" ({reused} reused from an earlier run with the same inputs)" if reused else "")
    )
    for trial in result.trials:
        if trial.status != "ok":
            summary.ran.append(f"  {trial.name} failed: {trial.error}")
    deferred = pending_runs(study.study_dir)
    if deferred:
        summary.ran.append(
            f"MLflow stopped answering: {deferred} run(s) wait in their journals; "
            f"`rerank-ray sync {' '.join(map(str, paths))}` logs them once it is back"
        )
    print(result.table_markdown)
    summary.outputs["report"] = str(result.report_md)
    summary.outputs["plot"] = str(result.plot_png)
    summary.mlflow += mlflow_lines(
        result.tracking_uri, result.experiment, result.parent_run_id, result.experiment_id
    )
    # A study with failed trials still writes its report, but the job must not read as a success.
    return 1 if any(t.status != "ok" for t in result.trials) else 0


def dry_run_forecast(study: Any, plans: list[Any], hardware: str | None, price: float | None) -> str:
    """The cost forecast table (``study.forecast``), or one line saying why there is none."""
    from rerank_ray.data.datasets import DataError
    from rerank_ray.models.sources import SourceError
    from rerank_ray.study.forecast import ForecastError, ThroughputTable, forecast_study, format_forecast

    try:
        forecast = forecast_study(
            study, plans, ThroughputTable.load(), hardware=hardware, price_per_hour=price
        )
    except (DataError, SourceError, ForecastError) as e:
        # The plan above stands without it; the reason is the fix (data to fetch, a table row).
        return f"No cost forecast: {e}"
    return format_forecast(forecast)


def cmd_sync(args: argparse.Namespace, summary: Summary) -> None:
    from rerank_ray.config import resolve_tracking_uri
    from rerank_ray.study.config import load_study
    from rerank_ray.study.logbook import bound_retries, sync_study

    study = load_study(*split_config_args(args))
    uri = resolve_tracking_uri(study.base.mlflow)
    bound_retries()
    runs, calls = sync_study(study.study_dir, uri)
    summary.ran.append(f"synced {runs} deferred MLflow run(s) of study {study.name} ({calls} call(s))")
    summary.mlflow += mlflow_lines(uri, study.base.mlflow.experiment, None)


def cmd_ui(args: argparse.Namespace, summary: Summary) -> None:
    from rerank_ray.config import resolve_tracking_uri
    from rerank_ray.study.tracking import redact_uri

    cfg = load_run_config(args)
    uri = resolve_tracking_uri(cfg.mlflow)
    if uri.startswith(("http://", "https://")):
        summary.ran.append(f"the tracking store is already a server: open {redact_uri(uri)}")
        return
    cmd = mlflow_server_command(uri, args.host, args.port)
    print(f"MLflow UI at http://{args.host}:{args.port} over {uri} (Ctrl-C stops it)", flush=True)
    log.debug("running %s", " ".join(cmd))
    started = time.perf_counter()
    try:
        code = subprocess.run(cmd).returncode
    except KeyboardInterrupt:
        code = 0
    if code != 0:
        raise RuntimeError(f"mlflow server exited with code {code}; is port {args.port} already in use?")
    summary.ran.append(f"served the MLflow UI over {uri} for {time.perf_counter() - started:.0f}s")


# ---------------------------------------------------------------------------------------------
# Parser and entry point.

VERBS: dict[str, tuple[Callable[[argparse.Namespace, Summary], int | None], str]] = {
    "prepare": (cmd_prepare, "build training groups (1 positive + hard negatives) as Parquet"),
    "train": (cmd_train, "train a reranker with Ray Train + DeepSpeed, export it, evaluate it"),
    "evaluate": (cmd_evaluate, "evaluate a saved model (or the first-stage run) on named suites"),
    "score": (cmd_score, "score training groups with a teacher (Ray Data batch job)"),
    "study": (cmd_study, "run a study grid with Ray Tune, logged to MLflow"),
    "sync": (cmd_sync, "log to MLflow what a study deferred while its tracking server was down"),
    "ui": (cmd_ui, "serve the MLflow UI on 127.0.0.1 over the project's tracking store"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rerank-ray",
        description="Train and compare text rerankers on Ray Train + DeepSpeed + Tune, logged to MLflow.",
        epilog="Examples:\n"
        "  rerank-ray study experiments/quickstart.yaml\n"
        "  rerank-ray train -c experiments/base.yaml train.epochs=2 model.num_layers=2\n"
        "  rerank-ray evaluate --first-stage --suite dl19\n"
        "  rerank-ray ui",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--log-dir",
        type=Path,
        default=None,
        help="where the run log goes (default: $RERANK_RAY_LOG_DIR or outputs/logs)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="DEBUG records on stderr too")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    subs = {name: sub.add_parser(name, help=text, description=text) for name, (_, text) in VERBS.items()}

    p = subs["prepare"]
    add_config_args(p)
    p.add_argument("--out", help="groups folder (default: <output_dir>/<name>/groups)")
    add_force_arg(p)

    p = subs["train"]
    add_config_args(p)
    p.add_argument("--groups", help="existing groups Parquet (default: build from the config)")
    p.add_argument(
        "--suite", action="append", help="evaluate on this suite (repeatable; default: eval.suites)"
    )
    p.add_argument("--no-eval", action="store_true", help="stop after exporting the model")
    add_force_arg(p)

    p = subs["evaluate"]
    add_config_args(p)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="a saved model folder (as written by `rerank-ray train`)")
    which.add_argument("--first-stage", action="store_true", help="evaluate the first-stage run (BM25)")
    p.add_argument("--suite", action="append", help="suite name (repeatable; default: eval.suites)")
    p.add_argument("--out", help="output folder (default: beside the model, or outputs/first-stage/eval)")

    p = subs["score"]
    add_config_args(p)
    p.add_argument("--groups", required=True, help="groups Parquet to score (from `rerank-ray prepare`)")
    p.add_argument("--out", required=True, help="output folder for the scores Parquet and manifest")

    p = subs["study"]
    add_config_args(p)
    p.add_argument(
        "--dry-run", action="store_true", help="print each trial's resources and cost forecast; start nothing"
    )
    p.add_argument(
        "--hardware", help="throughput table entry to forecast with (bench/throughput.yaml `hardware`)"
    )
    p.add_argument(
        "--price-per-hour", type=float, help="price of one GPU-hour (CPU-hour on CPU): gives money"
    )
    add_force_arg(p)

    add_config_args(subs["sync"])

    p = subs["ui"]
    add_config_args(p)
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=MLFLOW_UI_PORT, help=f"port (default: {MLFLOW_UI_PORT})")

    for name, (handler, _) in VERBS.items():
        subs[name].set_defaults(handler=handler)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    log_path = setup_logging(args.log_dir or default_log_dir(), verbose=args.verbose)
    summary = Summary(args.verb, log_path=log_path)
    log.debug("rerank-ray %s", " ".join(sys.argv[1:] if argv is None else argv))

    terminal = sys.stderr  # the real one: a signal may arrive while a library's prints are redirected

    def announce(why: str) -> None:
        said = "interrupted" if why == "KeyboardInterrupt" else f"stopped by {why}"
        print(
            f"rerank-ray {args.verb}: {said}; finished work is kept, the same command resumes; log: {log_path}",
            file=terminal,
            flush=True,
        )

    try:
        with stop_on_sigterm(announce):
            code = args.handler(args, summary) or 0
    except BaseException as exc:
        why = stop_reason(exc)
        if why is None and isinstance(exc, Exception):
            report_error(args.verb, exc, log_path)
            return 1
        if why is None:
            raise
        log.debug("stopped (%s)", why, exc_info=True)
        if why == "KeyboardInterrupt":  # a signal handler announced its stop when it arrived
            announce(why)
        return 130 if why == "KeyboardInterrupt" else 143
    print(summary.render(), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
