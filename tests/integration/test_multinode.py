"""A study that spans a cluster: a 2-node Ray cluster on one machine, as users run it.

- The **head** (`ray start --head`, 0 CPUs) runs each job's driver, as the head of
  ``cluster.yaml`` does; every trial's resources fit only on a worker node.
- Each **worker node** runs in its own mount namespace (``unshare --mount``, as root), with a
  private tmpfs over the head's output folder (``head-disk/``): that folder is the head's disk,
  which the worker cannot see. ``shared/`` is the storage both nodes see (an EFS mount on
  AWS), named by ``$RERANK_RAY_STORAGE``.
- **MLflow** runs as a tracking server on 127.0.0.1, as on the cluster; trials log to it from
  the worker node, artifacts included.

The tests, in order (they share the cluster):

1. a study whose output folder is on the head's disk is refused by the storage check within
   seconds, naming the worker node and the path, and nothing trains;
2. a study on the shared storage, whose worker node is killed (SIGKILL of every process of the
   node) after a trial's first checkpoint; a new worker node joins. Every trial finishes, the
   killed trial resumed from a step above 0 under the cluster's default retries, each trial has
   one MLflow child run with its metrics and artifacts, and the report counts every trial once.

Nodes are stopped by their own processes (their temp dirs), never with `ray stop`. Without root
or mount namespaces the module skips and says why; CI runs as root.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.integration.conftest import precomputed_scores
from tests.integration.ray_cluster import (
    BIN,
    free_port,
    head_command,
    node_processes,
    stop_node,
    submit,
    wait_for_job_api,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500), pytest.mark.xdist_group("multinode")]

STUDY = Path(__file__).parent / "data" / "cluster_study.yaml"
TRIALS = ("contrastive+tiny+s0", "distillation+tiny+given+s0")
# The files the same study writes on one node (read off `rerank-ray study` of this file on one
# machine), Ray's own storage (tune/, each trial's ray/) aside: the cluster run must write the
# same ones on the shared storage.
ONE_NODE_LAYOUT = sorted(
    [".lock", ".storage-token", "forecast.json", "identity.json", "study.yaml"]
    + [f"first_stage/{f}" for f in ("eval.json", "metrics.json", "tiny-scifact.per_query.tsv", "tiny-scifact.run")]
    + ["groups/groups.parquet", "groups/groups.stats.json", "report/report.md", "report/report.png"]
    # The MLflow journals of the driver's runs (study/logbook.py), their ids masked by `written`.
    + ["mlflow/study.<id>.json", "mlflow/teacher-given.<id>.json"]
    + ["teachers/given/scores/manifest.json", "teachers/given/scores/scores/part-00000.parquet"]
    + [
        f"trials/{t}/{f}"
        for t in TRIALS
        for f in (
            "eval/eval.json", "eval/metrics.json", "eval/tiny-scifact.per_query.tsv", "eval/tiny-scifact.run",
            "history.json", "mlflow_run.json", "run.json", "model/config.json",
            "model/model.safetensors", "model/rerank_ray.json", "model/tokenizer.json", "model/tokenizer_config.json",
        )
    ]
)  # fmt: skip
# Logical CPUs of a worker node: two trials (1 + 1 Train worker each) and Ray Data beside them.
WORKER_CPUS = 6


def cannot_unshare() -> str | None:
    """Why this machine cannot give a worker node its own disk, or None when it can."""
    if os.geteuid() != 0:
        return "a worker node with its own disk needs a mount namespace: run as root (CI does)"
    probe = subprocess.run(["unshare", "--mount", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"`unshare --mount` failed here: {probe.stderr.strip()}"
    return None


class Cluster:
    """The head, its worker nodes, the MLflow server and the folders of one test cluster."""

    def __init__(self, base: Path, env: dict[str, str]) -> None:
        self.base, self.env = base, env
        self.shared, self.head_disk = base / "shared", base / "head-disk"
        self.gcs, self.dash, self.mlflow_port = free_port(), free_port(), free_port()
        self.address = f"http://127.0.0.1:{self.dash}"
        self.mlflow_uri = f"http://127.0.0.1:{self.mlflow_port}"
        self.workers: list[str] = []
        self.mlflow: subprocess.Popen | None = None

    def start_mlflow(self) -> None:
        log = open(self.base / "mlflow-server.log", "w")  # noqa: SIM115 (closed with the process)
        self.mlflow = subprocess.Popen(
            [
                str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.mlflow_port),
                "--backend-store-uri", f"sqlite:///{self.base / 'mlflow.db'}",
                "--artifacts-destination", str(self.base / "mlartifacts"), "--workers", "1",
            ],
            stdout=log, stderr=subprocess.STDOUT, env=self.env,
        )  # fmt: skip
        wait_until(lambda: http_ok(f"{self.mlflow_uri}/health"), 90, "the MLflow server")

    def start_head(self) -> None:
        temp_dir = str(self.base / "h")
        cmd = head_command(temp_dir, dashboard_port=self.dash, gcs_port=self.gcs, num_cpus=0)
        subprocess.run(cmd, env=self.env, check=True, capture_output=True, text=True, timeout=180)
        wait_for_job_api(self.address)

    def start_worker(self) -> str:
        """A worker node in its own mount namespace, a tmpfs hiding the head's output folder;
        returns its temp dir (what stops it)."""
        temp_dir = str(self.base / f"w{len(self.workers)}")
        ray_start = (
            f"{BIN / 'ray'} start --address 127.0.0.1:{self.gcs} --node-ip-address 127.0.0.1 "
            f"--num-cpus {WORKER_CPUS} --temp-dir {temp_dir} --block --disable-usage-stats"
        )
        subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c",
             f"mount -t tmpfs -o size=64m tmpfs {self.head_disk} && exec {ray_start}"],
            env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.workers.append(temp_dir)
        wait_until(lambda: len(self.alive_nodes()) == 2, 120, f"worker node {temp_dir} to join")
        return temp_dir

    def alive_nodes(self) -> list[dict]:
        from ray.util.state import list_nodes

        return [n for n in list_nodes(address=self.address) if n.state == "ALIVE"]

    def stop(self) -> None:
        for temp_dir in [*self.workers, str(self.base / "h")]:
            stop_node(temp_dir)
        if self.mlflow is not None:
            self.mlflow.terminate()
            self.mlflow.wait(timeout=30)
        leftovers = [p for d in [*self.workers, str(self.base / "h")] for p in node_processes(d)]
        assert not leftovers, f"processes of the test cluster survived: {leftovers}"


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def wait_until(ready, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:g} s for {what}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def cluster(data_root):
    reason = cannot_unshare()
    if reason:
        pytest.skip(reason)
    # Short: Ray's unix socket paths live under the temp dirs and must stay under 107 bytes.
    base = Path(tempfile.mkdtemp(prefix="rr-mn-", dir="/tmp"))
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        # The head declares a silent node dead after ~3 s instead of ~30 s (Ray's health check).
        "RAY_health_check_period_ms": "1000",
        "RAY_health_check_timeout_ms": "1000",
        "RAY_health_check_failure_threshold": "3",
    }
    cluster = Cluster(base, env)
    cluster.shared.mkdir()
    cluster.head_disk.mkdir()
    started = time.perf_counter()
    try:
        cluster.start_mlflow()
        cluster.start_head()
        cluster.start_worker()
        print(f"\n2-node cluster and MLflow server up in {time.perf_counter() - started:.1f}s")
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


def study_file(cluster: Cluster, data_root: Path) -> Path:
    """The cluster study with its teacher's precomputed scores on the shared storage."""
    scores = precomputed_scores(
        data_root / "scifact", cluster.shared / "teacher-scores.parquet", "bm25-top100"
    )
    spec = yaml.safe_load(STUDY.read_text())
    spec["teachers"]["given"]["path"] = str(scores)
    path = cluster.base / "cluster_study.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def job_env(cluster: Cluster, data_root: Path, *, storage: Path | None) -> dict[str, str]:
    env = {
        "MLFLOW_TRACKING_URI": cluster.mlflow_uri,
        "RERANK_RAY_DATA_ROOT": str(data_root),
        "RERANK_RAY_LOG_DIR": str(cluster.base / "logs"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "DS_ACCELERATOR": "cpu",
        "TOKENIZERS_PARALLELISM": "false",
    }
    return {**env, "RERANK_RAY_STORAGE": str(storage)} if storage else env


def test_outputs_on_the_heads_disk_are_refused_before_anything_trains(cluster, data_root):
    study = study_file(cluster, data_root)
    out = cluster.head_disk / "outputs"
    worker = next(n for n in cluster.alive_nodes() if n.resources_total.get("CPU"))
    status, logs, seconds = submit(
        {"address": cluster.address, "env": cluster.env},
        ["rerank-ray", "study", str(study), f"base.output_dir={out}"],
        job_env(cluster, data_root, storage=None),
        timeout=300,
    )
    assert status == "FAILED"
    # The CLI's one line, before any trial (a trial's own check would fail it later, in Tune).
    refusal = next(line for line in logs.splitlines() if line.startswith("rerank-ray study: error: node "))
    assert worker.node_id[:8] in refusal and str(out / "cluster-study") in refusal, refusal
    assert "RERANK_RAY_STORAGE" in refusal  # the fix
    # Refused before the groups, the teachers and the trials: nothing trained.
    assert sorted(p.name for p in (out / "cluster-study").iterdir()) == [
        ".lock", ".storage-token", "forecast.json", "identity.json", "study.yaml",
    ]  # fmt: skip
    print(f"refused in a {seconds:.0f}s job (upload, start-up, imports and the check)")


def test_a_study_survives_a_lost_worker_node(cluster, data_root):
    """Kill the worker node after a trial's first checkpoint, start another: every trial
    finishes, the killed one resumed from its checkpoint, each is counted once."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    study = study_file(cluster, data_root)
    client = JobSubmissionClient(cluster.address)
    started = time.perf_counter()
    job = client.submit_job(
        entrypoint=f"rerank-ray study {study}",
        runtime_env={"env_vars": job_env(cluster, data_root, storage=cluster.shared)},
    )
    study_dir = cluster.shared / "outputs" / "cluster-study"
    wait_until(
        lambda: registered_checkpoint(study_dir) or client.get_job_status(job).is_terminal(),
        900,
        "a checkpoint",
    )
    first = registered_checkpoint(study_dir)
    assert first, client.get_job_logs(job)[-5000:]
    killed_trial, checkpoint_step = first
    stop_node(cluster.workers[-1], kill=True)
    killed_at = time.perf_counter() - started
    cluster.start_worker()
    wait_until(lambda: client.get_job_status(job).is_terminal(), 1200, "the study to finish")
    logs = client.get_job_logs(job)
    assert client.get_job_status(job) == JobStatus.SUCCEEDED, logs[-8000:]
    assert f"storage: all 2 nodes see {study_dir}" in logs  # the check ran on the head and the worker
    print(f"killed the worker at {killed_at:.0f}s (trial {killed_trial}); study done in "
          f"{time.perf_counter() - started:.0f}s")  # fmt: skip

    # The killed trial resumed from its checkpoint on the new node, under the default retries.
    history = json.loads((study_dir / "trials" / killed_trial / "history.json").read_text())
    resumed = {r["resumed_from_step"] for r in history if "resumed_from_step" in r}
    assert resumed and min(resumed) >= checkpoint_step > 0, (checkpoint_step, history[-3:])
    print(f"trial {killed_trial} resumed from step(s) {sorted(resumed)} of {history[-1]['step']}")
    # Every trial finished once: the study wrote what it writes on one node, and the report
    # counts each trial once.
    assert written(study_dir) == ONE_NODE_LAYOUT
    same_groups_as_on_one_node(study, study_dir, data_root)
    report = (study_dir / "report" / "report.md").read_text()
    assert "2 of 2 trials finished" in report
    assert all(
        sum(line.startswith(f"| {name} | ok |") for line in report.splitlines()) == 1 for name in TRIALS
    )
    check_mlflow(cluster)


def registered_checkpoint(study_dir: Path) -> tuple[str, int] | None:
    """(trial, step) of the first checkpoint Ray Train has registered (listed in its checkpoint
    manager's snapshot, written once the upload finished), or None. A checkpoint folder alone
    is not enough: a node lost while a checkpoint uploads restarts from the one before."""
    for snapshot in sorted(study_dir.glob("trials/*/ray/*/checkpoint_manager_snapshot.json")):
        try:
            results = json.loads(snapshot.read_text()).get("checkpoint_results") or []
        except (OSError, json.JSONDecodeError):  # being written
            continue
        if results:
            return snapshot.parents[2].name, int(results[0]["metrics"]["step"])
    return None


def written(study_dir: Path) -> list[str]:
    """The study's files, relative to its folder, without Ray's own storage; a driver run's
    MLflow journal id (random per run) reads ``<id>``."""
    return sorted(
        re.sub(r"^(mlflow/.+)\.[0-9a-f]{16}\.json$", r"\1.<id>.json", str(p.relative_to(study_dir)))
        for p in study_dir.rglob("*")
        if p.is_file()
        and "tune" != p.relative_to(study_dir).parts[0]
        and "ray" not in p.relative_to(study_dir).parts
    )


def same_groups_as_on_one_node(study: Path, study_dir: Path, data_root: Path) -> None:
    """The groups the cluster study trained on are the bytes one machine builds from the file."""
    from rerank_ray.data.groups import build_groups
    from rerank_ray.study.config import load_study
    from rerank_ray.train.identity import file_sha256

    cfg = load_study(
        [study], [f"base.output_dir={study_dir.parent / 'one-node'}", f"base.data.root={data_root}"]
    )
    local = build_groups(cfg.base, study_dir.parent / "one-node" / "groups").path
    assert file_sha256(local) == file_sha256(study_dir / "groups" / "groups.parquet")


def check_mlflow(cluster: Cluster) -> None:
    """One child run per trial (a retry resumes it), finished, with metrics and artifacts that
    the worker node sent to the tracking server."""
    import mlflow

    client = mlflow.MlflowClient(cluster.mlflow_uri)
    experiment = client.get_experiment_by_name("cluster-study")
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("role") == "study")
    children = [r for r in runs if r.data.tags.get("role") == "trial"]
    assert sorted(r.info.run_name for r in children) == sorted(TRIALS)
    for run in children:
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.status == "FINISHED", run.info
        assert "tiny-scifact/nDCG_10" in run.data.metrics, sorted(run.data.metrics)
        assert [a.path for a in client.list_artifacts(run.info.run_id, "eval")], run.info.run_name
