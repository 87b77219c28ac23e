"""MLflow logging through a tracking server that goes down and comes back (``study/logbook.py``):
calls are retried (bounded), then deferred to the run's journal; sync logs them once, and a
sync run again (or interrupted and replayed) duplicates nothing. A real `mlflow server`."""

from __future__ import annotations

import json
import time

import mlflow
import pytest

from rerank_ray.study import logbook
from rerank_ray.study.tracking import TrackingUnreachable, study_run
from tests.mlflow_server import MlflowServer


@pytest.fixture
def server(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")  # bounded retries, kept short here
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    srv = MlflowServer(tmp_path / "server").start()
    mlflow.set_tracking_uri(srv.uri)
    yield srv
    srv.stop()
    mlflow.set_tracking_uri(None)


def test_calls_made_while_the_server_is_down_are_deferred_then_synced_once(server, tmp_path, caplog):
    study_dir = tmp_path / "study"
    (study_dir / "a").mkdir(parents=True)
    (study_dir / "a" / "metrics.json").write_text('{"x": 1}')
    client = mlflow.MlflowClient(server.uri)
    experiment = client.create_experiment("e")
    with study_run(experiment, "s", study_dir, server.uri) as parent:
        logbook.log_params({"students": "a,b"})
        with logbook.start_run(
            "live", tags={"role": "trial"}, journal=study_dir / "a" / logbook.TRIAL_JOURNAL
        ):
            logbook.log_metrics({"loss": 1.0}, step=1)
        server.stop()
        t0 = time.perf_counter()
        with logbook.start_run("down", tags={"role": "trial"}) as down:  # created while down
            logbook.log_params({"lr": 0.1})
            logbook.log_metrics({"loss": 0.5}, step=1)
            logbook.log_metrics({"loss": 0.25}, step=2)
            logbook.log_artifact(study_dir / "a" / "metrics.json", "eval")
        logbook.set_tag("mlflow.note.content", "the report")
        deferred_s = time.perf_counter() - t0
    assert deferred_s < 30  # bounded retries, then deferred: not MLflow's minutes per call
    assert down.run_id is None and "does not answer" in caplog.text and "rerank-ray sync" in caplog.text
    journal = json.loads(down.path.read_text())
    assert [op["op"] for op in journal["pending"]] == [
        "tags",
        "params",
        "metrics",
        "metrics",
        "artifact",
        "end",
    ]
    assert logbook.RunLog.read(parent.path, server.uri).pending[-1] == {
        "op": "end",
        "status": "FINISHED",
        "ms": pytest.approx(time.time() * 1000, abs=60_000),
    }

    with pytest.raises(TrackingUnreachable):
        logbook.sync_study(study_dir, server.uri)

    server.start()
    assert logbook.sync_study(study_dir, server.uri) == (2, 8)
    assert logbook.sync_study(study_dir, server.uri) == (0, 0)  # again: nothing left, nothing duplicated
    runs = {r.info.run_name: r for r in client.search_runs([experiment])}
    assert sorted(runs) == ["down", "live", "s"]
    synced = runs["down"]
    assert synced.data.tags["mlflow.parentRunId"] == parent.run_id and synced.info.status == "FINISHED"
    assert synced.data.params == {"lr": "0.1"}
    assert [(m.step, m.value) for m in client.get_metric_history(synced.info.run_id, "loss")] == [
        (1, 0.5),
        (2, 0.25),
    ]
    assert [a.path for a in client.list_artifacts(synced.info.run_id, "eval")] == ["eval/metrics.json"]
    assert runs["s"].data.tags["mlflow.note.content"] == "the report" and runs["s"].info.status == "FINISHED"
    assert all(not logbook.RunLog.read(p, server.uri).pending for p in logbook.journals(study_dir))


def test_a_replayed_call_duplicates_nothing(server, tmp_path):
    """A sync interrupted after the server took a call but before the journal recorded it
    replays that call: the run is found by its journal id, the metric point is the same."""
    client = mlflow.MlflowClient(server.uri)
    experiment = client.create_experiment("e")
    run = logbook.new_run(tmp_path / "r.json", server.uri, experiment_id=experiment, run_name="r", tags={})
    op = {"op": "metrics", "metrics": {"m": 0.5}, "step": 3, "ms": 1_700_000_000_000}
    logbook.apply(client, run.run_id, op)
    logbook.apply(client, run.run_id, op)
    assert len(client.get_metric_history(run.run_id, "m")) == 1

    again = logbook.RunLog.read(run.path, server.uri)
    again.run_id = None  # as if the creation's answer was lost
    again._create()
    assert again.run_id == run.run_id and len(client.search_runs([experiment])) == 1


def test_a_journal_with_unlogged_calls_is_never_overwritten(tmp_path):
    path = tmp_path / logbook.TRIAL_JOURNAL
    run = logbook.RunLog(
        path,
        "http://127.0.0.1:1",
        "id",
        {"experiment_id": "1", "tags": {}},
        pending=[{"op": "tags", "tags": {}}],
    )
    run.save()
    with pytest.raises(RuntimeError, match="rerank-ray sync"):
        logbook.new_run(path, "http://127.0.0.1:1", experiment_id="1", run_name="t", tags={})
