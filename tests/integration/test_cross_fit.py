"""Cross-fitted teacher on tiny data: two fold teachers (random-init tiny models, one step each),
and no group is scored by a teacher that trained on its query."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from rerank_ray.study.config import load_study
from rerank_ray.study.plan import teacher_scores_dir
from rerank_ray.study.run import _groups
from rerank_ray.study.tracking import study_run
from rerank_ray.teacher.stage import teacher, teacher_info
from tests.conftest import TINY_BERT, tiny_scifact_study

pytestmark = pytest.mark.slow


def test_two_fold_teacher_scores_only_queries_it_did_not_train_on(ray_local, tmp_path):
    import mlflow

    model = {**TINY_BERT, "config_overrides": {**TINY_BERT["config_overrides"], "num_hidden_layers": 1}}
    cfg = load_study(
        overrides=[
            *tiny_scifact_study(tmp_path, "crossfit"),
            "base.train={max_steps: 1, micro_batch_groups: 2}",
            "base.deepspeed.zero_stage=0",
            f"teachers={{ce: {{kind: cross_encoder, model: {model}, cross_fit: 2, cross_fit_seed: 1}}}}",
            f"students={{s: {model}}}",
            "strategies=[distillation]",
            "eval.in_domain=[tiny-scifact]",
            "eval.depth={tiny-scifact: 5}",
        ]
    )
    mlflow.set_tracking_uri(cfg.base.mlflow.tracking_uri)
    experiment = mlflow.create_experiment("crossfit")
    # The study's own parent run (journaled through the logbook), as `rerank-ray study` opens it.
    with study_run(experiment, cfg.name, cfg.study_dir, cfg.base.mlflow.tracking_uri) as parent:
        groups_path = _groups(cfg)
        record, cost = teacher(cfg, "ce", groups_path, experiment, parent.run_id)
        info = teacher_info(cfg, "ce", groups_path)

    manifest = json.loads((teacher_scores_dir(cfg, "ce") / "manifest.json").read_text())
    folds = manifest["cross_fit"]["folds"]
    assert manifest["cross_fit"]["k"] == 2 and [f["fold"] for f in folds] == [0, 1]
    groups = pd.read_parquet(groups_path)
    scored_by = {g: f["fold"] for f in folds for g in f["scored_group_ids"]}
    assert sorted(scored_by) == sorted(groups["group_id"])  # every group scored ...
    assert sum(len(f["scored_group_ids"]) for f in folds) == len(groups)  # ... exactly once
    for f in folds:
        # What the fold teacher actually trained on: its training groups file, not the manifest's word.
        trained = set(pd.read_parquet(f"{f['model_dir']}/../groups/train/groups.parquet")["query_id"])
        assert trained == set(f["trained_query_ids"]) and trained
        scored = set(groups.loc[groups["group_id"].isin(f["scored_group_ids"]), "query_id"])
        assert scored == set(f["scored_query_ids"]) and not scored & trained
    assert folds[0]["run_fingerprint"] != folds[1]["run_fingerprint"]
    assert all(len(f["teacher_fingerprint"]) == 64 for f in folds)

    scores = pd.read_parquet(teacher_scores_dir(cfg, "ce") / "scores")
    fold_of_query = {q: f["fold"] for f in folds for q in f["scored_query_ids"]}
    assert (scores["query_id"].map(fold_of_query) == scores["fold"]).all()
    pairs = {(q, d) for q, ids in zip(groups["query_id"], groups["doc_ids"], strict=True) for d in ids}
    assert set(zip(scores["query_id"], scores["doc_id"], strict=True)) == pairs and len(scores) == len(pairs)
    assert "T=1" in manifest["diagnostics"] and info.diagnostics == manifest["diagnostics"]
    assert "2 cross-fit fold teachers" in info.evaluates
    assert set(record.scores) == {"tiny-scifact"} and cost.wall_s > 0
