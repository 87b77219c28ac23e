"""The MLflow tracking server goes down in the middle of a study and comes back.

A real `mlflow server` on 127.0.0.1; the tiny study (2 trials, one at a time) runs as a user
runs it (`rerank-ray study`, its own local Ray). The server is stopped once the first trial has
finished: the study goes on, finishes both trials, writes its report and says what waits.
Then the server starts again on the same store, `rerank-ray sync` logs what was deferred (the
second trial's run, the study's report and note, the registered model), and a second sync
changes nothing."""

from __future__ import annotations

import subprocess
import time

import mlflow
import pytest

from tests.conftest import finished_trials
from tests.integration.test_study import finish, rerank_ray_study
from tests.mlflow_server import MlflowServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

TINY_STUDY = "tests/integration/data/tiny_study.yaml"


def _snapshot(client: mlflow.MlflowClient, experiment_id: str) -> dict:
    runs = client.search_runs([experiment_id])
    return {
        "runs": sorted(
            (r.info.run_name, r.info.status, r.data.tags.get("mlflow.parentRunId", "")) for r in runs
        ),
        "loss points": sorted(
            len(client.get_metric_history(r.info.run_id, "train/loss"))
            for r in runs
            if r.data.tags.get("role") == "trial"
        ),
        "versions": sorted(v.run_id for v in client.search_model_versions("name = 'tiny-study'")),
    }


def test_a_study_outlives_its_tracking_server_and_sync_logs_what_waited(tmp_path, data_root, monkeypatch):
    from rerank_ray.config import PROJECT_ROOT

    server = MlflowServer(tmp_path / "mlflow").start()
    monkeypatch.chdir(PROJECT_ROOT)
    monkeypatch.setenv("RERANK_RAY_DATA_ROOT", str(data_root))
    monkeypatch.setenv("RERANK_RAY_LOG_DIR", str(tmp_path / "logs"))
    out = tmp_path / "outputs"
    args = [
        f"base.output_dir={out}", f"base.mlflow.tracking_uri={server.uri}",
        "tune.max_concurrent_trials=1", "tune.num_cpus=8",
    ]  # fmt: skip
    trials = out / "tiny-study" / "trials"
    try:
        proc = rerank_ray_study(TINY_STUDY, *args)
        deadline = time.monotonic() + 600
        while not finished_trials(trials):
            assert proc.poll() is None, proc.communicate()[0][-4000:]
            assert time.monotonic() < deadline, "no trial finished in time"
            time.sleep(0.5)
        server.stop()
        down_at = time.monotonic()
        output = finish(proc)
        print(f"\nstudy ended {time.monotonic() - down_at:.0f}s after the server stopped")
        assert proc.returncode == 0, output[-4000:]
        assert len(finished_trials(trials)) == 2  # both trials finished
        assert (out / "tiny-study" / "report" / "report.md").is_file()
        assert "MLflow stopped answering" in output and "rerank-ray sync" in output

        server.start()
        client = mlflow.MlflowClient(server.uri)
        experiment = client.get_experiment_by_name("tiny-study").experiment_id
        before = _snapshot(client, experiment)
        assert len(before["runs"]) == 2 and before["versions"] == []  # the parent and the first trial
        sync = [str(PROJECT_ROOT / ".venv" / "bin" / "rerank-ray"), "sync", TINY_STUDY, *args]
        synced = subprocess.run(sync, capture_output=True, text=True, timeout=300)
        assert synced.returncode == 0, synced.stderr[-3000:]
        synced = synced.stdout + synced.stderr
        assert "synced" in synced and "deferred MLflow run(s)" in synced, synced[-3000:]

        after = _snapshot(client, experiment)
        parent = next(r for r in client.search_runs([experiment]) if r.data.tags.get("role") == "study")
        assert parent.info.status == "FINISHED" and "tiny-study" in parent.data.tags["mlflow.note.content"]
        children = [r for r in client.search_runs([experiment]) if r.data.tags.get("role") == "trial"]
        assert sorted(r.data.tags["student"] for r in children) == ["tiny-l1", "tiny-l2"]
        assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
        for run in children:
            assert run.info.status == "FINISHED" and "tiny-scifact/nDCG_10" in run.data.metrics
            assert [a.path for a in client.list_artifacts(run.info.run_id, "eval")], run.info.run_name
        assert after["loss points"] == [2, 2]  # max_steps 2, logged once each
        assert len(after["versions"]) == 1  # the best contrastive student, registered once
        assert [a.path for a in client.list_artifacts(parent.info.run_id, "report")]

        assert subprocess.run(sync, capture_output=True, timeout=300).returncode == 0
        assert _snapshot(client, experiment) == after  # a second sync duplicates nothing
    finally:
        server.stop()
