"""What changes on a cluster (rerank_ray/cluster.py): the storage root, its token check, and the
fault-tolerance defaults. The check across real nodes is tests/integration/test_multinode.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rerank_ray.cluster import (
    CLUSTER_CHECKPOINT_MINUTES,
    CLUSTER_RETRIES,
    STORAGE_ENV,
    StorageError,
    StorageToken,
    fault_tolerance_line,
    node_sees,
    verify_token,
    write_token,
)
from rerank_ray.config import RunConfig, training_config
from rerank_ray.outputs import run_identity as outputs_identity
from rerank_ray.study.config import StudyConfig
from rerank_ray.train.identity import run_identity
from tests.conftest import TINY_BERT


@pytest.fixture
def one_machine(monkeypatch):
    monkeypatch.delenv(STORAGE_ENV, raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


@pytest.fixture
def on_a_cluster(monkeypatch, tmp_path):
    monkeypatch.setenv(STORAGE_ENV, str(tmp_path / "efs"))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return tmp_path / "efs"


def study(**extra) -> StudyConfig:
    return StudyConfig.model_validate({"students": {"s": {}}, "strategies": ["contrastive"], **extra})


def test_on_one_machine_nothing_changes(one_machine):
    cfg = RunConfig()
    assert (cfg.train.max_failures, cfg.train.checkpoint_every_minutes) == (0, None)
    assert cfg.output_dir == Path("outputs") and study().tune.max_failures == 0
    line = fault_tolerance_line(cfg.train, 0)
    assert "on one machine" in line and "only at the end of each epoch" in line


def test_on_a_cluster_runs_retry_checkpoint_periodically_and_write_under_the_storage_root(on_a_cluster):
    cfg = RunConfig()
    assert cfg.train.max_failures == CLUSTER_RETRIES and study().tune.max_failures == CLUSTER_RETRIES
    assert cfg.train.checkpoint_every_minutes == CLUSTER_CHECKPOINT_MINUTES
    assert cfg.output_dir == on_a_cluster / "outputs"
    assert study().study_dir == on_a_cluster / "outputs" / "study"
    # What a worker rebuilds from the dict is the same config (no second prefix).
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    line = fault_tolerance_line(cfg.train, CLUSTER_RETRIES)
    assert f"storage {on_a_cluster}" in line and "every 10 min of training" in line and "3 time(s)" in line


def test_a_ray_address_alone_means_a_cluster(monkeypatch):
    monkeypatch.delenv(STORAGE_ENV, raising=False)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert RunConfig().train.max_failures == CLUSTER_RETRIES and RunConfig().output_dir == Path("outputs")


def test_explicit_values_win_over_the_cluster_defaults(on_a_cluster, tmp_path):
    cfg = RunConfig.from_dict(
        {"output_dir": str(tmp_path / "mine"), "train": {"max_failures": 0, "checkpoint_every_minutes": 30}}
    )
    assert (cfg.train.max_failures, cfg.train.checkpoint_every_minutes) == (0, 30)
    assert cfg.output_dir == tmp_path / "mine"
    assert study(tune={"max_failures": 1}).tune.max_failures == 1


def test_how_a_run_survives_failures_is_not_part_of_what_it_trains(one_machine, tmp_path):
    """The same run trained on one machine and on a cluster (retries, periodic checkpoints,
    cloud storage) has one identity, so either reuses the other and a retry resumes."""
    groups = tmp_path / "groups.parquet"
    groups.write_bytes(b"groups")
    local = RunConfig.from_dict({"name": "r", "model": TINY_BERT})
    cluster = RunConfig.from_dict(
        {
            "name": "r",
            "model": TINY_BERT,
            "train": {
                "max_failures": 3,
                "checkpoint_every_minutes": 10,
                "checkpoint_every_steps": 50,
                "storage_path": "s3://bucket/ckpt",
            },
        }
    )
    assert run_identity(local, groups) == run_identity(cluster, groups)
    assert outputs_identity(local.to_dict()) == outputs_identity(cluster.to_dict())
    other = RunConfig.from_dict({"name": "r", "model": TINY_BERT, "train": {"learning_rate": 1e-3}})
    assert run_identity(other, groups).config != run_identity(local, groups).config
    assert "max_failures" not in training_config(cluster.to_dict())["train"]


def test_a_token_is_read_back_and_a_node_without_it_gets_one_line_with_the_path_and_the_fix(tmp_path):
    token = write_token(tmp_path)
    assert Path(token.path).read_text() == token.token and node_sees(token) is None
    verify_token(token, "trial t")  # this node sees it

    elsewhere = StorageToken(path=str(tmp_path / "head-disk" / "study" / ".storage-token"), token=token.token)
    with pytest.raises(StorageError) as e:
        verify_token(elsewhere, "trial t")
    message = str(e.value)
    assert "\n" not in message and message.startswith("trial t on node ")
    assert f"{tmp_path / 'head-disk' / 'study'} does not exist there" in message and STORAGE_ENV in message

    stale = StorageToken(path=token.path, token="another study's")
    assert "holds another study's token" in node_sees(stale)
    assert StorageToken.from_dict(json.loads(json.dumps(token.to_dict()))) == token


def test_a_trial_that_cannot_see_the_study_storage_fails_before_it_trains(tmp_path, monkeypatch):
    from rerank_ray.study import trial

    monkeypatch.setattr(trial, "train_and_evaluate", lambda *a, **k: pytest.fail("must not train"))
    monkeypatch.setattr(trial, "_trial_mlflow_run", lambda *a, **k: pytest.fail("must not log"))
    token = StorageToken(path=str(tmp_path / "missing" / ".storage-token"), token="t")
    with pytest.raises(StorageError, match="trial x on node .* cannot see the study's storage"):
        trial.run_trial({"trial": {"name": "x"}, "study": {"storage_token": token.to_dict()}})


def test_a_train_worker_without_the_run_folder_fails_before_it_trains(tmp_path, one_machine):
    from rerank_ray.train.loop import check_run_folder

    cfg = RunConfig.from_dict({"name": "r", "output_dir": str(tmp_path / "not-here")})
    with pytest.raises(StorageError, match=f"the run folder {tmp_path / 'not-here' / 'r'} does not exist"):
        check_run_folder(cfg)
    cfg.run_dir.mkdir(parents=True)
    check_run_folder(cfg)
    # Checkpoints in cloud storage need no shared folder.
    cloud = RunConfig.from_dict(
        {"name": "c", "output_dir": str(tmp_path / "x"), "train": {"storage_path": "s3://b/p"}}
    )
    check_run_folder(cloud)


def test_a_retried_trial_resumes_its_mlflow_run_and_a_new_study_run_starts_another(tmp_path, monkeypatch):
    import mlflow

    from rerank_ray.study import logbook, trial
    from rerank_ray.study.plan import TrialPlan

    class Plan:
        name = "t"
        run = RunConfig.from_dict({"name": "t", "output_dir": str(tmp_path / "trials")})

        @staticmethod
        def tags() -> dict[str, str]:
            return {"strategy": "contrastive"}

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    experiment_id = client.create_experiment("e")
    parent = client.create_run(experiment_id).info.run_id
    ctx = {"tracking_uri": uri, "experiment_id": experiment_id, "parent_run_id": parent, "name": "s"}
    plan: TrialPlan = Plan()  # type: ignore[assignment]

    first = trial._trial_mlflow_run(plan, ctx).run_id
    client.set_terminated(first, "KILLED")  # the node died
    retry = trial._trial_mlflow_run(plan, ctx)
    logbook.end_run(retry, "FINISHED")
    assert retry.run_id == first and client.get_run(first).info.status == "FINISHED"

    rerun = {**ctx, "parent_run_id": client.create_run(experiment_id).info.run_id}
    again = trial._trial_mlflow_run(plan, rerun).run_id
    assert again != first and mlflow.active_run() is None
    assert client.get_run(again).data.tags["mlflow.parentRunId"] == rerun["parent_run_id"]


def test_the_report_says_what_a_trials_checkpoints_cost():
    from rerank_ray.study.records import Cost
    from rerank_ray.study.report import _checkpoint_note

    assert _checkpoint_note(Cost(checkpoints=4.0, checkpoint_s=2.0)) == "4 checkpoints, 2.0 s (0.50 s each)"
    assert _checkpoint_note(Cost()) == ""
    assert Cost.from_json(Cost(checkpoints=4.0, checkpoint_s=2.0).to_json()).checkpoints == 4.0
