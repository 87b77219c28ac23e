"""Ray nodes started with `ray start` for the tests, and stopped by their own processes.

Each node gets its own short ``--temp-dir`` (Ray's unix socket paths must stay under 107 bytes)
and is stopped by ending exactly the processes whose command line names that temp dir, never
with `ray stop`, which would also kill the local Ray of anyone else running tests as this user.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil

from rerank_ray.config import PROJECT_ROOT

BIN = Path(sys.executable).parent
# Never uploaded with the working dir (Ray also skips what .gitignore lists).
EXCLUDES = [
    ".venv",
    ".git",
    "outputs",
    "mlflow.db",
    "mlartifacts",
    "test-artifacts",
    "dist",
    # The repository's data/ (the jobs get $RERANK_RAY_DATA_ROOT; 21 MB less to upload per
    # job). Anchored: a bare "data" would also drop tests/integration/data, the study files.
    "/data",
    "**/__pycache__",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_processes(temp_dir: str) -> list[psutil.Process]:
    """Every process of the node started with `temp_dir`: those that carry it on their command
    line (GCS, raylet, dashboard, `ray start --block`), and their descendants (workers and
    agents, whose titles Ray rewrites to ``ray::...``: killed with their raylet, they would
    linger as orphans)."""
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(temp_dir in arg for arg in proc.info["cmdline"] or []):
                found[proc.pid] = proc
                found.update((child.pid, child) for child in proc.children(recursive=True))
        except psutil.Error:
            continue
    return list(found.values())


def stop_node(temp_dir: str, *, kill: bool = False) -> None:
    """As `ray stop` does: SIGTERM, a grace period, then SIGKILL for what is left. `kill`:
    SIGKILL at once, as when a machine disappears."""
    procs = node_processes(temp_dir)
    for proc in procs:
        try:
            if kill:
                proc.kill()
            else:
                proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=5)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)


def head_command(temp_dir: str, *, dashboard_port: int, gcs_port: int, num_cpus: int) -> list[str]:
    """`ray start --head` on 127.0.0.1 with every port chosen free."""
    return [
        str(BIN / "ray"), "start", "--head",
        "--node-ip-address", "127.0.0.1",
        "--port", str(gcs_port),
        "--dashboard-host", "127.0.0.1",
        "--dashboard-port", str(dashboard_port),
        "--ray-client-server-port", str(free_port()),
        "--dashboard-agent-listen-port", str(free_port()),
        "--metrics-export-port", str(free_port()),
        "--runtime-env-agent-port", str(free_port()),
        "--num-cpus", str(num_cpus),
        "--temp-dir", temp_dir,
        "--disable-usage-stats",
    ]  # fmt: skip


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
