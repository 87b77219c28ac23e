"""Integration fixtures shared by several modules: one tiny bring-your-own study."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import TINY_BERT

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


def precomputed_scores(folder: Path, path: Path, first_stage: str = "bm25-top10") -> Path:
    """Scores a user already has: the BM25 score of every train-run pair, judged pairs + 10."""
    run = pd.read_csv(folder / f"{first_stage}.train.run", sep=r"\s+", header=None, dtype={0: str, 2: str})
    qrels = pd.read_csv(folder / "qrels" / "train.tsv", sep="\t", dtype={"query-id": str, "corpus-id": str})
    scores = pd.DataFrame({"query_id": run[0], "doc_id": run[2], "score": run[4].astype(float)})
    judged = pd.DataFrame(
        {"query_id": qrels["query-id"], "doc_id": qrels["corpus-id"], "score": 10.0 + qrels["score"]}
    )
    scores = pd.concat([scores, judged]).drop_duplicates(["query_id", "doc_id"], keep="last")
    scores.to_parquet(path, index=False)
    return path


@pytest.fixture(scope="session")
def byo_study(ray_local, data_root, tmp_path_factory):
    """A study on a collection defined in YAML (a BEIR-style folder built here), distilling
    from a precomputed score file: (StudyConfig, StudyResult, the score file)."""
    from rerank_ray.study.run import load_study, run_study

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
