"""Bring your own collection and teacher: a study on a collection defined in YAML (a BEIR-style
folder built here), distilling from a precomputed score file, ending with the best student of
each strategy registered in MLflow. One tiny study serves every test of the module."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from rerank_ray.tune.study import load_study, run_study
from tests.conftest import TINY_BERT

pytestmark = pytest.mark.slow

FILES = (
    "corpus.jsonl",
    "queries.jsonl",
    "qrels/train.tsv",
    "qrels/test.tsv",
    "bm25-top10.train.run",
    "bm25-top10.test.run",
)


def build_collection(data_root: Path, folder: Path) -> Path:
    """A BEIR-layout folder (the tiny-scifact fixture's files, copied): corpus.jsonl,
    queries.jsonl, qrels/<split>.tsv and a BM25 run per split, as any BM25 tool writes it."""
    for name in FILES:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(data_root / "fixtures" / "tiny-scifact" / name, folder / name)
    return folder


def precomputed_scores(folder: Path, path: Path) -> Path:
    """Scores a user already has: the BM25 score of every train-run pair, judged pairs + 10."""
    run = pd.read_csv(folder / "bm25-top10.train.run", sep=r"\s+", header=None, dtype={0: str, 2: str})
    qrels = pd.read_csv(folder / "qrels" / "train.tsv", sep="\t", dtype={"query-id": str, "corpus-id": str})
    scores = pd.DataFrame({"query_id": run[0], "doc_id": run[2], "score": run[4].astype(float)})
    judged = pd.DataFrame(
        {"query_id": qrels["query-id"], "doc_id": qrels["corpus-id"], "score": 10.0 + qrels["score"]}
    )
    scores = pd.concat([scores, judged]).drop_duplicates(["query_id", "doc_id"], keep="last")
    scores.to_parquet(path, index=False)
    return path


@pytest.fixture(scope="module")
def study(ray_local, data_root, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("byo")
    folder = build_collection(data_root, tmp / "mycorpus")
    scores = precomputed_scores(folder, tmp / "teacher-scores.parquet")
    student = {**TINY_BERT, "config_overrides": {**TINY_BERT["config_overrides"], "num_hidden_layers": 1}}
    spec = {
        "name": "byo",
        "base": {
            "output_dir": str(tmp / "out"),
            "mlflow": {"tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}", "experiment": "byo"},
            "data": {"train": [str(folder)], "train_split": "train", "first_stage": "bm25-top10"},
            "groups": {"depth": 10, "group_size": 4, "groups_per_query": 2, "positive_min_label": 1},
            "train": {"max_steps": 2, "micro_batch_groups": 2, "log_every_steps": 1},
            "deepspeed": {"zero_stage": 0},
        },
        "teachers": {"mine": {"kind": "scores", "path": str(scores)}},
        "students": {"tiny-l1": student},
        "strategies": ["contrastive", "distillation"],
        "eval": {
            "suites_defined": {
                "mycorpus": {
                    "dataset": str(folder),
                    "split": "test",
                    "first_stage": "bm25-top10",
                    "depth": 10,
                    "measures": ["nDCG@10", "RR@10"],
                }
            },
            "in_domain": ["mycorpus"],
        },
        "tune": {"max_concurrent_trials": 2, "cpus_per_trial": 0.5},
        "scoring": {"shard_size": 16},
    }
    path = tmp / "study.yaml"
    path.write_text(yaml.safe_dump(spec))
    cfg = load_study([path])
    return cfg, run_study(cfg, command="pytest"), scores


def test_custom_suite_study_end_to_end(study):
    import mlflow

    cfg, result, _ = study
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
        line for line in report.splitlines() if line.startswith("| contrastive-tiny-l1-s0 | ok |")
    ]
    assert forecast_rows and forecast_rows[0].split("|")[4].strip() not in ("", "–")


def test_scores_teacher_provenance_is_logged(study):
    import mlflow

    cfg, result, scores = study
    client = mlflow.MlflowClient(result.tracking_uri)
    experiment = client.get_experiment_by_name("byo").experiment_id
    (teacher,) = client.search_runs([experiment], filter_string="tags.role = 'teacher'")
    params = teacher.data.params
    assert params["teacher.kind"] == "scores" and params["teacher.path"] == str(scores.resolve())
    assert params["teacher.sha256"] == hashlib.sha256(scores.read_bytes()).hexdigest()
    assert params["teacher.rows"] == str(len(pd.read_parquet(scores)))


def test_best_students_registered_and_score_like_the_saved_folder(study):
    import json

    import mlflow

    from rerank_ray.models import load_reranker

    cfg, result, _ = study
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
        summary = json.loads((cfg.study_dir / "trials" / registered.trial / "trial.json").read_text())
        expected = load_reranker(summary["model_dir"]).score(pairs["query"].tolist(), pairs["doc"].tolist())
        assert model.predict(pairs).tolist() == pytest.approx(expected, abs=1e-6)
