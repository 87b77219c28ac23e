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

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil
import pytest

from rerank_ray.config import PROJECT_ROOT

# One xdist worker runs both tests: they share the module-scoped `ray_head`.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900), pytest.mark.xdist_group("job_submit")]

BIN = Path(sys.executable).parent
TINY_STUDY = "tests/integration/data/tiny_study.yaml"
# Never uploaded with the working dir (Ray also skips what .gitignore lists).
EXCLUDES = [
    ".venv",
    ".git",
    "outputs",
    "mlflow.db",
    "mlartifacts",
    "test-artifacts",
    "dist",
    "**/__pycache__",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def head_processes(temp_dir: str) -> list[psutil.Process]:
    """Every process of the head started with `temp_dir` (GCS, raylet, dashboard, workers, job
    supervisor): all of them carry the session directory under it on their command line."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if any(temp_dir in arg for arg in cmdline):
            found.append(proc)
    return found


def stop_head(temp_dir: str) -> None:
    procs = head_processes(temp_dir)
    for proc in procs:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    # As `ray stop` does: SIGTERM, a grace period, then SIGKILL for what is left.
    _, alive = psutil.wait_procs(procs, timeout=5)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)


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
    cmd = [
        str(BIN / "ray"), "start", "--head",
        "--node-ip-address", "127.0.0.1",
        "--port", str(free_port()),
        "--dashboard-host", "127.0.0.1",
        "--dashboard-port", str(dash),
        "--ray-client-server-port", str(free_port()),
        "--dashboard-agent-listen-port", str(free_port()),
        "--metrics-export-port", str(free_port()),
        "--runtime-env-agent-port", str(free_port()),
        "--num-cpus", "8",  # logical, as in ray_local: two trials at once, and Ray Data beside them
        "--temp-dir", temp_dir,
        "--disable-usage-stats",
    ]  # fmt: skip
    started = time.perf_counter()
    try:
        subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, timeout=180)
        address = f"http://127.0.0.1:{dash}"
        wait_for_job_api(address)
        print(f"\nray head up in {time.perf_counter() - started:.1f}s at {address}")
        yield {"address": address, "env": env, "temp_dir": temp_dir}
    finally:
        stopping = time.perf_counter()
        stop_head(temp_dir)
        print(f"ray head stopped in {time.perf_counter() - stopping:.1f}s")
        assert not head_processes(temp_dir), "processes of the test's head survived stop_head"
        shutil.rmtree(temp_dir, ignore_errors=True)


def wait_for_job_api(address: str, timeout: float = 60) -> None:
    from ray.job_submission import JobSubmissionClient

    deadline = time.monotonic() + timeout
    while True:
        try:
            JobSubmissionClient(address).list_jobs()
            return
        except Exception:  # the dashboard is still starting
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def submit(
    head: dict, entrypoint: list[str], env_vars: dict[str, str], timeout: float
) -> tuple[str, str, float]:
    """`ray job submit` (waiting, as a user would); returns (status, logs, seconds)."""
    from ray.job_submission import JobSubmissionClient

    submission_id = f"rerank-ray-test-{uuid.uuid4().hex[:8]}"
    runtime_env = {"env_vars": env_vars, "excludes": EXCLUDES}
    cmd = [
        str(BIN / "ray"), "job", "submit",
        "--address", head["address"],
        "--submission-id", submission_id,
        "--working-dir", str(PROJECT_ROOT),
        "--runtime-env-json", json.dumps(runtime_env),
        "--", *entrypoint,
    ]  # fmt: skip
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=head["env"], capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - started
    client = JobSubmissionClient(head["address"])
    status = str(client.get_job_status(submission_id).value)
    logs = client.get_job_logs(submission_id)
    print(f"job {submission_id}: {status} in {seconds:.1f}s")
    if status != "SUCCEEDED":
        print(proc.stdout[-5000:], proc.stderr[-5000:], logs[-10000:], sep="\n----\n")
    return status, logs, seconds


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
