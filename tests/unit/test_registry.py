"""The best student of each strategy, registered in MLflow (no Ray: the study's runs and trial
summaries are written here the way the study runner writes them)."""

from __future__ import annotations

import json

import mlflow
import pandas as pd
import pytest
import torch

from rerank_ray.config import ModelConfig
from rerank_ray.models import build_model, load_reranker
from rerank_ray.study import logbook
from rerank_ray.study.config import load_study
from rerank_ray.study.plan import plan_study
from rerank_ray.study.records import Cost, EvalRecord, TrialRecord, TrialSummary
from rerank_ray.study.registry import best_per_strategy, register_best
from rerank_ray.study.tracking import child_tags, study_run
from tests.conftest import TINY_BERT

PAIRS = pd.DataFrame(
    {
        "query": ["what is a cat", "dogs", "stem cells"],
        "doc": ["a cat is small", "a dog barks", "cells divide"],
    }
)


def study(tmp_path):
    return load_study(
        overrides=[
            "name=reg",
            f"base.output_dir={tmp_path / 'out'}",
            "students={a: {}, b: {}}",
            "strategies=[contrastive, distillation]",
            "teachers={t: {kind: scores, path: x.parquet}}",
            # dl20 is evaluated, so it must not be training data (refused at load time).
            "base.data.train=[trec-dl-2021]",
            "eval.in_domain=[dl19, dl20]",
            "eval.out_of_domain=[scifact]",
        ]
    )


def record(plan, dl19: float, dl20: float, status: str = "ok") -> TrialRecord:
    scores = {"dl19": dl19, "dl20": dl20, "scifact": 0.99}
    return TrialRecord(
        plan.name,
        plan.strategy,
        plan.student,
        plan.teacher,
        plan.seed,
        status,
        eval=EvalRecord(scores=scores),
    )


def test_best_is_by_mean_in_domain_measure_per_strategy(tmp_path):
    cfg = study(tmp_path)
    plans = plan_study(cfg)
    names = [p.name for p in plans]
    assert names == ["contrastive+a+s0", "contrastive+b+s0", "distillation+a+t+s0", "distillation+b+t+s0"]
    records = [
        record(plans[0], 0.50, 0.30),  # mean 0.40
        record(plans[1], 0.30, 0.60),  # mean 0.45: best contrastive (out-of-domain does not count)
        record(plans[2], 0.90, 0.90, status="error"),  # failed: never chosen
        record(plans[3], 0.20, 0.20),
    ]
    best = best_per_strategy(cfg, records)
    assert {k: (r.name, round(s, 6)) for k, (r, s) in best.items()} == {
        "contrastive": ("contrastive+b+s0", 0.45),
        "distillation": ("distillation+b+t+s0", 0.2),
    }


def test_registered_model_loads_back_and_scores_like_the_saved_folder(tmp_path):
    cfg = study(tmp_path)
    plans = plan_study(cfg)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = mlflow.create_experiment("reg")
    records = []
    uri = mlflow.get_tracking_uri()
    with study_run(experiment, "reg", tmp_path, uri) as parent:
        for i, plan in enumerate(plans):
            torch.manual_seed(i)
            model_dir = build_model(ModelConfig.model_validate({**TINY_BERT, "init": "random"})).save(
                tmp_path / plan.name / "model"
            )
            run_dir = plan.run.output_dir / plan.name
            run_dir.mkdir(parents=True)
            summary = TrialSummary(plan.name, {}, {}, Cost(), model_dir, run_dir / "eval", {}, None)
            (run_dir / "trial.json").write_text(json.dumps(summary.to_json()))
            tags = child_tags(cfg.name, parent.run_id, "trial", **plan.tags())
            with logbook.start_run(plan.name, tags=tags, journal=run_dir / logbook.TRIAL_JOURNAL):
                logbook.log_metrics({"dl19/nDCG_10": 0.1 * i})
            records.append(record(plan, 0.1 * i, 0.1 * i))
        registered = register_best(cfg, plans, records, parent.run_id)

    assert [(r.strategy, r.trial, r.version) for r in registered] == [
        ("contrastive", "contrastive+b+s0", "1"),
        ("distillation", "distillation+b+t+s0", "2"),
    ]
    client = mlflow.MlflowClient()
    for r in registered:
        version = client.get_model_version("reg", r.version)
        assert version.tags["strategy"] == r.strategy and version.tags["student"] == "b"
        assert client.get_run(version.run_id).info.run_name == r.trial  # linked to the trial's run
        model = mlflow.pyfunc.load_model(f"models:/reg/{r.version}")
        expected = load_reranker(tmp_path / r.trial / "model").score(
            PAIRS["query"].tolist(), PAIRS["doc"].tolist()
        )
        assert model.predict(PAIRS).tolist() == pytest.approx(expected, abs=1e-6)
    # The logged signature names the two text columns; MLflow enforces it.
    with pytest.raises(mlflow.exceptions.MlflowException, match=r"missing inputs \['doc'\]"):
        model.predict(PAIRS[["query"]])
