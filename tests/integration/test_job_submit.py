"""A study submitted as a Ray job, the way users run it on a cluster:

    ray job submit --address http://<head>:8265 --working-dir . \\
        --runtime-env-json '{"env_vars": {"MLFLOW_TRACKING_URI": ...}}' -- rerank-ray study <file>

A local head is started with `ray start --head` bound to 127.0.0.1, on free ports and its own
``--temp-dir``, and stopped afterwards by ending exactly the processes whose command line names
that temp dir. (`ray stop` would also kill the local Ray of anyone else running tests as this
user.) The job runs the venv's `rerank-ray`; the uploaded working dir excludes the venv, git
metadata and outputs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import finished_trials
from tests.integration.ray_cluster import (
    BIN,
    free_port,
    head_command,
    node_processes,
    stop_node,
    submit,
    wait_for_job_api,
)

# One xdist worker runs this module's tests: they share the module-scoped `ray_head`.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900), pytest.mark.xdist_group("job_submit")]
TINY_STUDY = "tests/integration/data/tiny_study.yaml"


@pytest.fixture(scope="module")
def ray_head():
    """`ray start --head` on 127.0.0.1; yields the dashboard (job API) address."""
    # Short: Ray's unix socket paths live under the temp dir and must stay under 107 bytes.
    temp_dir = tempfile.mkdtemp(prefix="rr-head-", dir="/tmp")
    dash = free_port()
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    # 8 logical CPUs, as in ray_local: two trials at once, and Ray Data beside them.
    cmd = head_command(temp_dir, dashboard_port=dash, gcs_port=free_port(), num_cpus=8)
    started = time.perf_counter()
    try:
        subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, timeout=180)
        address = f"http://127.0.0.1:{dash}"
        wait_for_job_api(address)
        print(f"\nray head up in {time.perf_counter() - started:.1f}s at {address}")
        yield {"address": address, "env": env, "temp_dir": temp_dir}
    finally:
        stopping = time.perf_counter()
        stop_node(temp_dir)
        print(f"ray head stopped in {time.perf_counter() - stopping:.1f}s")
        assert not node_processes(temp_dir), "processes of the test's head survived stop_node"
        shutil.rmtree(temp_dir, ignore_errors=True)


def job_env(tmp_path: Path, data_root: Path) -> dict[str, str]:
    return {
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "RERANK_RAY_DATA_ROOT": str(data_root),
        "RERANK_RAY_LOG_DIR": str(tmp_path / "logs"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "DS_ACCELERATOR": "cpu",
        "TOKENIZERS_PARALLELISM": "false",
    }


def test_job_gets_the_runtime_env_and_the_installed_package(ray_head, tmp_path, data_root):
    """The plumbing alone: env vars arrive, the working dir is the project, MLflow is reachable."""
    probe = (
        "import os, mlflow, rerank_ray.cli; "
        "assert os.path.isfile('pyproject.toml'), os.getcwd(); "
        "assert not os.path.exists('.venv'); "
        "mlflow.set_experiment('probe'); "
        "mlflow.start_run(run_name='probe').__exit__(None, None, None); "
        "print('probe ok', os.environ['RERANK_RAY_DATA_ROOT'])"
    )
    status, logs, _ = submit(ray_head, ["python", "-c", probe], job_env(tmp_path, data_root), timeout=300)
    assert status == "SUCCEEDED"
    assert f"probe ok {data_root}" in logs

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("probe").experiment_id])
    assert [r.info.run_name for r in runs] == ["probe"]


def test_study_submitted_as_a_job_logs_its_trials_to_mlflow(ray_head, tmp_path, data_root):
    env = job_env(tmp_path, data_root)
    out = tmp_path / "outputs"
    status, logs, seconds = submit(
        ray_head,
        ["rerank-ray", "study", TINY_STUDY, f"base.output_dir={out}"],
        env,
        timeout=780,
    )
    assert status == "SUCCEEDED"
    assert "== rerank-ray study: done in" in logs  # the CLI's summary reached the job log

    import mlflow

    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("tiny-study")
    assert experiment is not None, [e.name for e in client.search_experiments()]
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("role") == "study"]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get("role") == "trial"]
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert sorted(r.data.tags["student"] for r in children) == ["tiny-l1", "tiny-l2"]
    assert {r.data.tags["strategy"] for r in children} == {"contrastive"}
    for run in children:
        assert "tiny-scifact/nDCG_10" in run.data.metrics, sorted(run.data.metrics)
    print(f"tiny study as a Ray job: {seconds:.0f}s")


def test_a_stopped_job_keeps_its_finished_trials_and_its_run_reads_killed(ray_head, tmp_path, data_root):
    """`ray job stop` after the first trial finished: the job stops, the running trial ends, the
    study's MLflow run reads KILLED (not FINISHED), and the finished trial is reused by a rerun."""
    import mlflow
    from ray.job_submission import JobStatus, JobSubmissionClient
    from ray.util.state import list_actors

    from rerank_ray.config import PROJECT_ROOT
    from rerank_ray.study.config import load_study
    from rerank_ray.study.plan import plan_study
    from rerank_ray.study.trial import finished_summary
    from tests.integration.ray_cluster import EXCLUDES

    env, out = job_env(tmp_path, data_root), tmp_path / "outputs"
    overrides = [f"base.output_dir={out}", "tune.max_concurrent_trials=1", "base.mlflow.experiment=tiny-stop"]
    client = JobSubmissionClient(ray_head["address"])
    job = client.submit_job(
        entrypoint=" ".join(["rerank-ray", "study", TINY_STUDY, *overrides]),
        runtime_env={"env_vars": env, "working_dir": str(PROJECT_ROOT), "excludes": EXCLUDES},
    )
    trials = out / "tiny-study" / "trials"
    deadline = time.monotonic() + 600
    while not finished_trials(trials):
        assert not client.get_job_status(job).is_terminal(), client.get_job_logs(job)[-5000:]
        assert time.monotonic() < deadline, "no trial finished in time"
        time.sleep(0.5)
    client.stop_job(job)
    while not client.get_job_status(job).is_terminal():
        time.sleep(0.5)
    logs = client.get_job_logs(job)
    assert client.get_job_status(job) == JobStatus.STOPPED, logs[-5000:]
    assert "stopped by SIGTERM; finished work is kept, the same command resumes" in logs
    finished = finished_trials(trials)
    assert len(finished) == 1, finished  # stopped mid-study

    # The running trial ended with the job; the study's run reads KILLED, not FINISHED.
    deadline = time.monotonic() + 60
    while [
        a
        for a in list_actors(address=ray_head["address"], filters=[("state", "=", "ALIVE")])
        if "ImplicitFunc" in a.class_name
    ]:
        assert time.monotonic() < deadline, "a trial outlived its stopped job"
        time.sleep(1)
    runs = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"]).search_runs(
        [mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"]).get_experiment_by_name("tiny-stop").experiment_id]
    )
    study = next(r for r in runs if r.data.tags.get("role") == "study")
    assert study.info.status == "KILLED" and study.data.tags["interrupted"] == "SIGTERM"

    # A rerun of the same command reuses the finished trial.
    cfg = load_study([PROJECT_ROOT / TINY_STUDY], [*overrides, f"base.data.root={data_root}"])
    plan = next(p for p in plan_study(cfg) if p.name == finished[0])
    assert finished_summary(plan.run, cfg.study_dir / "groups" / "groups.parquet", plan.name) is not None
