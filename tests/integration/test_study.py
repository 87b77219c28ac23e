"""A 2x2 study of tiny trials on local Ray: MLflow parent and child runs, tags, metric keys, report."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from rerank_ray.config import ConfigError, ModelConfig
from rerank_ray.models import build_model
from rerank_ray.study.run import load_study, run_study
from tests.conftest import TINY_BERT, finished_trials

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


def resume_study(tmp_path) -> dict:
    """One study-trained teacher `t`; student `ok` trained both ways; student `bad`, whose
    max_length does not fit its max_position_embeddings, fails inside its trial's worker."""
    # As small as `ok` (1 layer), so the forecast ties them and Tune keeps plan order.
    bad = {
        **TINY_BERT,
        "config_overrides": {
            **TINY_BERT["config_overrides"],
            "num_hidden_layers": 1,
            "max_position_embeddings": 16,
        },
    }
    return {
        "name": "resume",
        "base": {
            "output_dir": str(tmp_path / "out"),
            "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "resume"},
            "data": {"train": ["fixtures/tiny-scifact"], "train_split": "train", "first_stage": "bm25-top10"},
            "groups": {"depth": 10, "group_size": 4, "groups_per_query": 2, "positive_min_label": 1},
            "train": {"max_steps": 2, "micro_batch_groups": 2, "log_every_steps": 1},
            "deepspeed": {"zero_stage": 0},
        },
        "teachers": {
            "t": {"kind": "cross_encoder", "model": TINY_BERT, "overrides": {"train": {"max_steps": 2}}}
        },
        "students": {"ok": yaml.safe_load(tiny_student(1)), "bad": bad},
        "strategies": ["contrastive", "distillation"],
        # Plan order = Tune's order (equal forecasts) with one trial at a time: the failing trial runs last.
        "grid": [{"students": ["ok"]}, {"strategies": ["contrastive"], "students": ["bad"]}],
        "eval": {"in_domain": ["tiny-dl19"]},
        "tune": {"max_concurrent_trials": 1, "cpus_per_trial": 0.5, "num_cpus": 8},
        "scoring": {"shard_size": 16},
    }


def rerank_ray_study(study_file, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "rerank-ray"), "study", str(study_file), *overrides],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: the test can kill all it started
    )


def finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    return out


def test_killed_study_resumes_and_reuses_by_content(tmp_path):
    """Kill the driver once the `ok` trials have finished; the same command then reuses them and
    runs only the failing one; a retrained teacher then retrains only the distillation trial."""
    study_file = tmp_path / "study.yaml"
    study_file.write_text(yaml.safe_dump(resume_study(tmp_path)))
    trials = tmp_path / "out" / "resume" / "trials"
    contrastive, distillation = trials / "contrastive+ok+s0", trials / "distillation+ok+t+s0"

    proc = rerank_ray_study(study_file)
    try:
        deadline = time.monotonic() + 600
        while not {contrastive.name, distillation.name} <= set(finished_trials(trials)):
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            assert time.monotonic() < deadline, "the ok trials did not finish in time"
            time.sleep(0.5)
        proc.kill()  # the driver, as a killed terminal would
        proc.wait(timeout=60)
    finally:
        finish(proc, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "out" / "resume" / "report" / "report.md").exists()
    stamp = {t: (t / "model" / "model.safetensors").stat().st_mtime_ns for t in (contrastive, distillation)}

    # 1. The same command: both finished trials are reused; only the unfinished one runs, and fails.
    proc = rerank_ray_study(study_file)
    out = finish(proc)
    assert proc.returncode == 1, out[-3000:]  # a study with a failed trial exits 1, after its report
    assert "trial contrastive+ok+s0: reusing the finished run" in out
    assert "trial distillation+ok+t+s0: reusing the finished run" in out
    assert "teacher t: reusing the finished run" in out
    assert {t: (t / "model" / "model.safetensors").stat().st_mtime_ns for t in stamp} == stamp
    report = (tmp_path / "out" / "resume" / "report" / "report.md").read_text()
    for name in ("contrastive+ok+s0", "distillation+ok+t+s0", "contrastive+bad+s0"):
        assert name in report, report
    assert "max_position_embeddings=16" in report, report  # the failure, with its error

    # 2. The teacher trains longer: it and the distillation trial retrain, the contrastive one is reused.
    # (Without the failing student this time: it has been shown, and costs a trial.)
    proc = rerank_ray_study(study_file, "teachers.t.overrides.train.max_steps=3", "grid=[{students: [ok]}]")
    out = finish(proc)
    assert proc.returncode == 0, out[-3000:]
    assert "teacher t: training again, its config changed" in out
    assert "trial distillation+ok+t+s0: training again, its teacher scores changed" in out
    assert "trial contrastive+ok+s0: reusing the finished run" in out
    assert (contrastive / "model" / "model.safetensors").stat().st_mtime_ns == stamp[contrastive]
    assert (distillation / "model" / "model.safetensors").stat().st_mtime_ns != stamp[distillation]
