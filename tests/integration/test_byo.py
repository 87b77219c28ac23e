"""Bring your own collection and teacher: a study on a collection defined in YAML (a BEIR-style
folder built here), distilling from a precomputed score file, ending with the best student of
each strategy registered in MLflow. One tiny study (``byo_study`` in tests/integration/conftest.py,
shared with the MLflow browser test) serves every test."""

from __future__ import annotations

import hashlib

import pandas as pd
import pytest

# One xdist worker runs every test that shares `byo_study` (with test_mlflow_ui.py), so it is built once.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("byo")]


def test_custom_suite_study_end_to_end(byo_study):
    import mlflow

    cfg, result, _ = byo_study
    assert [t.status for t in result.trials] == ["ok", "ok"], [t.error for t in result.trials]
    client = mlflow.MlflowClient(result.tracking_uri)
    parent = client.get_run(result.parent_run_id)
    assert "first_stage/mycorpus/nDCG_10" in parent.data.metrics
    trials = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{result.parent_run_id}' and tags.role = 'trial'",
    )
    assert len(trials) == 2
    for run in trials:
        assert {"mycorpus/nDCG_10", "mycorpus/RR_10"} <= set(run.data.metrics)
    assert "mycorpus" in result.table_markdown
    # The report's cost table puts the dry run's forecast beside the actual wall time.
    report = result.report_md.read_text()
    assert "| wall (s) | forecast (s) |" in report
    forecast_rows = [
        line for line in report.splitlines() if line.startswith("| contrastive+tiny-l1+s0 | ok |")
    ]
    assert forecast_rows and forecast_rows[0].split("|")[4].strip() not in ("", "–")


def test_scores_teacher_provenance_is_logged(byo_study):
    import mlflow

    cfg, result, scores = byo_study
    client = mlflow.MlflowClient(result.tracking_uri)
    experiment = client.get_experiment_by_name("byo").experiment_id
    (teacher,) = client.search_runs([experiment], filter_string="tags.role = 'teacher'")
    params = teacher.data.params
    assert params["teacher.kind"] == "scores" and params["teacher.path"] == str(scores.resolve())
    assert params["teacher.sha256"] == hashlib.sha256(scores.read_bytes()).hexdigest()
    assert params["teacher.rows"] == str(len(pd.read_parquet(scores)))


def test_best_students_registered_and_score_like_the_saved_folder(byo_study):
    import json

    import mlflow

    from rerank_ray.models import load_reranker

    cfg, result, _ = byo_study
    mlflow.set_tracking_uri(result.tracking_uri)
    assert sorted(r.strategy for r in result.registered) == ["contrastive", "distillation"]
    pairs = pd.DataFrame(
        {"query": ["what is a cat", "dogs", "cells"], "doc": ["a cat is small", "a dog", "stem cells"]}
    )
    client = mlflow.MlflowClient()
    for registered in result.registered:
        version = client.get_model_version(cfg.name, registered.version)
        assert version.tags["strategy"] == registered.strategy and version.tags["trial"] == registered.trial
        trial_run = client.get_run(version.run_id)
        assert trial_run.info.run_name == registered.trial
        assert trial_run.data.tags["mlflow.parentRunId"] == result.parent_run_id
        model = mlflow.pyfunc.load_model(f"models:/{cfg.name}/{registered.version}")
        summary = json.loads((cfg.study_dir / "trials" / registered.trial / "run.json").read_text())
        expected = load_reranker(summary["model_dir"]).score(pairs["query"].tolist(), pairs["doc"].tolist())
        assert model.predict(pairs).tolist() == pytest.approx(expected, abs=1e-6)
