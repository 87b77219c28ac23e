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
from rerank_ray.tune.config import StudyConfig
from rerank_ray.tune.plan import TrialPlan
from rerank_ray.tune.records import TrialRecord
from rerank_ray.tune.trial import read_summary

log = logging.getLogger("rerank_ray.tune")

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
    """Log and register the best student of each strategy (see the module docstring), reading
    each trial's saved model folder from its ``trial.json``; the active tracking URI is the
    study's."""
    runs_of = {plan.name: plan.run for plan in plans}
    client = mlflow.MlflowClient()
    runs = {
        run.info.run_name: run.info.run_id
        for run in client.search_runs(
            [client.get_run(parent_run_id).info.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}' and tags.role = 'trial'",
        )
    }
    registered = []
    for strategy, (record, score) in best_per_strategy(cfg, records).items():
        tags = {
            "study": cfg.name,
            "strategy": strategy,
            "student": record.student,
            "teacher": record.teacher or "none",
            "seed": str(record.seed),
            "trial": record.name,
            "measure": cfg.eval.measure,
        }
        with mlflow.start_run(run_id=runs[record.name], nested=True):
            info = mlflow.pyfunc.log_model(
                name=MODEL_NAME,
                python_model=RerankerModel(),
                artifacts={"model": _model_dir(runs_of[record.name])},
                code_paths=[str(Path(__file__).resolve().parents[1])],
                pip_requirements=[f"{p}=={version(p)}" for p in REQUIREMENTS],
                signature=_signature(),
                registered_model_name=cfg.name,
                tags=tags,
            )
            metrics = {mlflow_key(s, cfg.eval.measure): record.eval.scores[s] for s in cfg.eval.in_domain}
            mlflow.log_metrics({**metrics, "in_domain_mean": score}, model_id=info.model_id)
        version_id = str(info.registered_model_version)
        for key, value in tags.items():
            client.set_model_version_tag(cfg.name, version_id, key, value)
        client.update_model_version(
            cfg.name,
            version_id,
            description=(
                f"Best {strategy} student of study {cfg.name}: {record.student} (trial {record.name}), "
                f"mean in-domain {cfg.eval.measure} {score:.4f} over {', '.join(cfg.eval.in_domain)}."
            ),
        )
        log.info(
            "registered %s version %s: %s (%s %.4f)",
            cfg.name,
            version_id,
            record.name,
            cfg.eval.measure,
            score,
        )
        registered.append(Registered(strategy, record.name, version_id, score))
    return registered


def _model_dir(run: RunConfig) -> str:
    return str(read_summary(Path(run.output_dir) / run.name).model_dir)


def _signature() -> Any:
    from mlflow.models import infer_signature

    example = pd.DataFrame({"query": ["what is a cat"], "doc": ["a cat is a small animal"]})
    return infer_signature(example, pd.Series([0.0], name="score"), params={"batch_size": 64})
