"""A 2x2 study of tiny trials on local Ray: MLflow parent and child runs, tags, metric keys, report."""

from __future__ import annotations

import pytest
import torch

from rerank_ray.config import ConfigError, ModelConfig
from rerank_ray.models import build_model
from rerank_ray.tune.study import load_study, run_study
from tests.conftest import TINY_BERT

pytestmark = pytest.mark.slow


def tiny_student(layers: int) -> str:
    return str(
        {**TINY_BERT, "config_overrides": {**TINY_BERT["config_overrides"], "num_hidden_layers": layers}}
    )


def study_overrides(tmp_path, teacher_path: str) -> list[str]:
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return [
        "name=tiny",
        f"base.output_dir={tmp_path / 'out'}",
        f"base.mlflow.tracking_uri={tracking}",
        "base.mlflow.experiment=tiny-study",
        "base.data.train=[fixtures/tiny-scifact]",
        "base.data.train_split=train",
        "base.data.first_stage=bm25-top10",
        "base.groups.depth=10",
        "base.groups.group_size=4",
        "base.groups.groups_per_query=2",
        "base.groups.positive_min_label=1",
        "base.train.max_steps=2",
        "base.train.micro_batch_groups=2",
        "base.train.log_every_steps=1",
        "base.deepspeed.zero_stage=0",
        f"teachers={{given: {{kind: cross_encoder, path: {teacher_path}}}}}",
        f"students={{tiny-l1: {tiny_student(1)}, tiny-l2: {tiny_student(2)}}}",
        "strategies=[contrastive, distillation]",
        "eval.in_domain=[tiny-dl19]",
        "eval.out_of_domain=[tiny-scifact]",
        "tune.max_concurrent_trials=4",
        "tune.cpus_per_trial=0.5",
        "scoring.shard_size=16",
    ]


def test_unknown_name_fails_before_anything_starts(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_study(overrides=[*study_overrides(tmp_path, str(tmp_path)), "grid=[{students: [tiny-l3]}]"])
    assert "known students: tiny-l1, tiny-l2" in str(err.value)
    assert not (tmp_path / "out").exists() and not (tmp_path / "mlflow.db").exists()


def test_two_by_two_study_writes_parent_and_child_runs(ray_local, tmp_path):
    import mlflow

    torch.manual_seed(0)
    teacher = build_model(ModelConfig.model_validate(TINY_BERT)).save(tmp_path / "teacher")
    cfg = load_study(overrides=study_overrides(tmp_path, str(teacher)))
    result = run_study(cfg, command="pytest")

    assert [t.status for t in result.trials] == ["ok"] * 4, [t.error for t in result.trials]
    client = mlflow.MlflowClient(result.tracking_uri)
    experiment = client.get_experiment_by_name("tiny-study")
    runs = client.search_runs([experiment.experiment_id])
    by_role: dict[str, list] = {}
    for run in runs:
        by_role.setdefault(run.data.tags["role"], []).append(run)
    assert len(by_role["study"]) == 1 and by_role["study"][0].info.run_id == result.parent_run_id
    assert len(by_role["teacher"]) == 1
    trials = by_role["trial"]
    assert len(trials) == 4
    combos = set()
    for run in trials:
        tags = run.data.tags
        assert tags["mlflow.parentRunId"] == result.parent_run_id
        assert run.info.status == "FINISHED"
        combos.add((tags["strategy"], tags["student"], tags["teacher"], tags["seed"]))
        for key in ("tiny-dl19/nDCG_10", "tiny-scifact/nDCG_10", "cost/wall_s", "cost/cpu_hours"):
            assert key in run.data.metrics, (key, sorted(run.data.metrics))
        assert all("@" not in key for key in run.data.metrics)
        assert run.data.params["loss.name"] == tags["strategy"]
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "eval")}
        assert {"eval/tiny-dl19.run", "eval/tiny-dl19.per_query.tsv"} <= artifacts
    assert combos == {
        ("contrastive", "tiny-l1", "none", "0"),
        ("contrastive", "tiny-l2", "none", "0"),
        ("distillation", "tiny-l1", "given", "0"),
        ("distillation", "tiny-l2", "given", "0"),
    }
    distil = next(r for r in trials if r.data.tags["strategy"] == "distillation")
    assert [a.path for a in client.list_artifacts(distil.info.run_id, "teacher_scores")] == [
        "teacher_scores/manifest.json"
    ]

    assert result.report_md.is_file() and result.plot_png.is_file()
    text = result.report_md.read_text()
    assert "## What to do" in text and "## Teacher diagnostics" in text and "| given | 1 |" in text
    assert "| tiny-l1 | 1 |" in result.table_markdown and "teacher: given" in result.table_markdown
    parent_artifacts = {a.path for a in client.list_artifacts(result.parent_run_id, "report")}
    assert {"report/report.md", "report/report.png"} <= parent_artifacts
