"""The study's answer as MLflow registered models: the best student of each strategy.

At the end of a study, for each strategy, the trial whose student scores best on the in-domain
suites (the mean of ``eval.measure`` over ``eval.in_domain``) is logged, in its own trial run,
as an MLflow pyfunc model (:class:`RerankerModel`; artifacts: the saved reranker folder, plus
this package's code so the model loads where rerank_ray is not installed), and registered under
the study's name. One version per strategy; each version carries the tags ``strategy``,
``student``, ``teacher``, ``seed``, ``trial`` and ``measure``, its run is the trial's run (with
every metric of the trial), and the in-domain scores are logged as the logged model's metrics.

Load it back with ``mlflow.pyfunc.load_model("models:/<study>/<version>")``; ``predict`` takes
a DataFrame with ``query`` and ``doc`` (text) columns and returns one raw score per row
(float64, higher = more relevant), the same as ``load_reranker(folder).score``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd

from rerank_ray.config import RunConfig
from rerank_ray.evaluation.metrics import mlflow_key
from rerank_ray.study import logbook
from rerank_ray.study.config import StudyConfig
from rerank_ray.study.plan import TrialPlan
from rerank_ray.study.records import TrialRecord
from rerank_ray.study.trial import read_summary

log = logging.getLogger("rerank_ray.study")

MODEL_NAME = "reranker"  # the logged model's name inside the trial run
REQUIREMENTS = ("torch", "transformers", "pandas", "pydantic", "pyyaml")


class RerankerModel(mlflow.pyfunc.PythonModel):
    """Scores (query, doc) pairs with a saved reranker (artifact ``model``)."""

    def load_context(self, context: Any) -> None:
        from rerank_ray.models import load_reranker

        self.reranker = load_reranker(context.artifacts["model"], inference=True)

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.Series:
        missing = {"query", "doc"} - set(model_input.columns)
        if missing:
            raise ValueError(
                f"reranker input lacks column(s) {sorted(missing)}; give a DataFrame with query and doc"
            )
        batch_size = int((params or {}).get("batch_size", 64))
        scores = self.reranker.score(
            model_input["query"].astype(str).tolist(), model_input["doc"].astype(str).tolist(), batch_size
        )
        return pd.Series(scores, index=model_input.index, dtype="float64", name="score")


@dataclass(frozen=True)
class Registered:
    strategy: str
    trial: str
    version: str
    score: float  # mean in-domain eval.measure


def best_per_strategy(cfg: StudyConfig, records: list[TrialRecord]) -> dict[str, tuple[TrialRecord, float]]:
    """strategy -> (its best ok trial, that trial's mean in-domain score); ties: first trial."""
    best: dict[str, tuple[TrialRecord, float]] = {}
    for record in records:
        if record.status != "ok" or record.eval is None:
            continue
        values = [record.eval.scores[s] for s in cfg.eval.in_domain if s in record.eval.scores]
        if len(values) != len(cfg.eval.in_domain):
            continue
        score = sum(values) / len(values)
        if record.strategy not in best or score > best[record.strategy][1]:
            best[record.strategy] = (record, score)
    return best


def register_best(
    cfg: StudyConfig, plans: list[TrialPlan], records: list[TrialRecord], parent_run_id: str
) -> list[Registered]:
    """Log and register the best student of each strategy (see the module docstring), in the
    trial's MLflow run of this study (its journal, ``<trial>/mlflow_run.json``). When the
    tracking server is down, or the trial's run is itself deferred, the registration waits in
    that journal for ``rerank-ray sync`` (``study/logbook.py``); its version reads "deferred"."""
    runs_of = {plan.name: plan.run for plan in plans}
    registered = []
    for strategy, (record, score) in best_per_strategy(cfg, records).items():
        run = logbook.RunLog.read(
            runs_of[record.name].run_dir / logbook.TRIAL_JOURNAL, mlflow.get_tracking_uri()
        )
        if run.create["tags"].get(logbook.PARENT_TAG) != parent_run_id:
            log.warning("not registering %s: its MLflow run is not one of this study run's", record.name)
            continue
        args = {
            "name": cfg.name,
            "model_dir": _model_dir(runs_of[record.name]),
            "tags": {
                "study": cfg.name, "strategy": strategy, "student": record.student,
                "teacher": record.teacher or "none", "seed": str(record.seed), "trial": record.name,
                "measure": cfg.eval.measure,
            },
            "metrics": {mlflow_key(s, cfg.eval.measure): record.eval.scores[s] for s in cfg.eval.in_domain}
            | {"in_domain_mean": score},
            "description": (
                f"Best {strategy} student of study {cfg.name}: {record.student} (trial {record.name}), "
                f"mean in-domain {cfg.eval.measure} {score:.4f} over {', '.join(cfg.eval.in_domain)}."
            ),
        }  # fmt: skip
        run.call({"op": "call", "name": "register_model", "args": args})
        version = "deferred" if run.deferred else _version_of(cfg.name, run.run_id)
        log.info(
            "registered %s version %s: %s (%s %.4f)", cfg.name, version, record.name, cfg.eval.measure, score
        )
        registered.append(Registered(strategy, record.name, version or "missing", score))
    return registered


def _version_of(name: str, run_id: str | None) -> str | None:
    """The version of registered model `name` logged in run `run_id`, if any."""
    versions = mlflow.MlflowClient().search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    return str(versions[0].version) if versions else None


@logbook.journal_call("register_model")
def register_model(run_id: str, args: dict[str, Any]) -> None:
    """Log the reranker in `args["model_dir"]` as a pyfunc model in run `run_id` and register it
    as a version of `args["name"]` with its tags and description; nothing when that run already
    has a version (a replayed call)."""
    if _version_of(args["name"], run_id) is not None:
        return
    with mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None):
        info = mlflow.pyfunc.log_model(
            name=MODEL_NAME,
            python_model=RerankerModel(),
            artifacts={"model": args["model_dir"]},
            code_paths=[str(Path(__file__).resolve().parents[1])],
            pip_requirements=[f"{p}=={version(p)}" for p in REQUIREMENTS],
            signature=_signature(),
            registered_model_name=args["name"],
            tags=args["tags"],
        )
        mlflow.log_metrics(args["metrics"], model_id=info.model_id)
    client = mlflow.MlflowClient()
    version_id = str(info.registered_model_version)
    for key, value in args["tags"].items():
        client.set_model_version_tag(args["name"], version_id, key, value)
    client.update_model_version(args["name"], version_id, description=args["description"])


def _model_dir(run: RunConfig) -> str:
    run_dir = Path(run.output_dir) / run.name
    summary = read_summary(run_dir)
    if summary is None:
        raise FileNotFoundError(
            f"{run_dir} holds no finished trial (its run.json has no evaluation); rerun the study"
        )
    return str(summary.model_dir)


def _signature() -> Any:
    from mlflow.models import infer_signature

    example = pd.DataFrame({"query": ["what is a cat"], "doc": ["a cat is a small animal"]})
    return infer_signature(example, pd.Series([0.0], name="score"), params={"batch_size": 64})
