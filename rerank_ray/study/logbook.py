"""MLflow logging that survives a tracking server going down: retried, then deferred, then synced.

Every MLflow run of a study (its parent run, teachers, fold teachers, trials) is a
:class:`RunLog` with a journal file on the study's storage: a trial's is
``<trial>/mlflow_run.json`` (so a retried trial resumes its run), the driver's runs' are
``<study>/mlflow/<name>.<id>.json``. Each call (params, metrics with their timestamps and
steps, tags, artifacts, the end status, the run's creation) goes to the server through
``MlflowClient``, whose HTTP retries are bounded here (:func:`bound_retries`: a few seconds, not
MLflow's default of minutes). When a call fails and the server does not answer its health check,
the run is *deferred*: that call and every later one are appended to the journal's ``pending``
list instead, the study goes on, and its results stay on disk as always.

:func:`sync_study` (``rerank-ray sync STUDY``, and the start of every study run) replays the
pending calls in order once the server is back, creating deferred runs under their parent
(a local parent id is resolved through its journal), and empties each journal's list as it
goes. A replay is idempotent, so an interrupted sync is simply run again: a run is created
only when no run carries its journal id (tag ``rerank_ray.log_id``), metrics keep their
original timestamps (MLflow stores an identical point once), params and tags are set to the
same values, artifacts overwrite themselves, and a model version is registered only when none
carries the trial's ``log_id`` (:mod:`rerank_ray.study.registry`).

The module-level functions (:func:`start_run`, :func:`log_metrics`, ...) act on the innermost
run started in this process, as MLflow's fluent API does.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rerank_ray.io import write_json

log = logging.getLogger("rerank_ray.study")

LOG_ID_TAG = "rerank_ray.log_id"
PARENT_TAG = "mlflow.parentRunId"
LOCAL = "local:"  # a parent run id not known yet: "local:<its journal's log id>"
DRIVER_DIR = "mlflow"  # <study>/mlflow/: the journals of the driver's runs
TRIAL_JOURNAL = "mlflow_run.json"
# MLflow's own HTTP retries (defaults: 7 retries, backoff factor 2, 120 s timeout: minutes per
# call). Bounded here unless the user set them: 3 retries with backoff factor 1 before a run defers.
RETRY_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}


def bound_retries() -> None:
    """Set MLflow's HTTP retry settings to :data:`RETRY_ENV` where the user has not."""
    for key, value in RETRY_ENV.items():
        os.environ.setdefault(key, value)


@dataclass
class RunLog:
    """One MLflow run and its journal (see the module docstring). `run_id` is None while its
    creation is deferred; `create` holds what creates it."""

    path: Path
    tracking_uri: str
    log_id: str
    create: dict[str, Any]
    run_id: str | None = None
    pending: list[dict[str, Any]] = field(default_factory=list)
    created_at: float = field(default_factory=time.time)
    synced: int = 0  # calls replayed by sync_study, for its summary

    @property
    def ref(self) -> str:
        """The id a child run names as its parent: the run id, or a local one until created."""
        return self.run_id or f"{LOCAL}{self.log_id}"

    @property
    def deferred(self) -> bool:
        return bool(self.pending)

    def to_json(self) -> dict[str, Any]:
        return {
            "log_id": self.log_id, "run_id": self.run_id, "parent_run_id": self.create["tags"].get(PARENT_TAG),
            "created_at": self.created_at, "create": self.create, "pending": self.pending,
        }  # fmt: skip

    @classmethod
    def read(cls, path: Path, tracking_uri: str) -> RunLog:
        d = json.loads(path.read_text())
        return cls(path, tracking_uri, d["log_id"], d["create"], d["run_id"], d["pending"], d["created_at"])

    def save(self) -> None:
        write_json(self.path, self.to_json())

    # -- one call: to the server, or to the journal when the server is down ------------------
    def call(self, op: dict[str, Any]) -> None:
        """Apply `op` now, or append it to the journal when this run is deferred or the server
        stops answering (any other error is raised: it is a bug, not an outage)."""
        if not self.deferred:
            try:
                if self.run_id is None:
                    self._create()
                apply(self._client(), self.run_id, op)
                return
            except Exception as e:
                if server_answers(self.tracking_uri):
                    raise
                log.warning(
                    "MLflow %s does not answer (%s): run %r is logged to %s until it is back; "
                    "`rerank-ray sync STUDY.yaml` (or the study run again) logs it then",
                    _redact(self.tracking_uri), _short(e), self.create.get("run_name"), self.path,
                )  # fmt: skip
        self.pending.append(op)
        self.save()

    def _client(self) -> Any:
        import mlflow

        return mlflow.MlflowClient(self.tracking_uri)

    def _create(self) -> None:
        """Create the run (idempotent: an existing run with this journal's id is taken)."""
        client = self._client()
        tags = dict(self.create["tags"])
        parent = tags.get(PARENT_TAG, "")
        if parent.startswith(LOCAL):
            raise LookupError(f"parent run {parent} of {self.create.get('run_name')!r} is not created yet")
        found = client.search_runs(
            [self.create["experiment_id"]], f"tags.`{LOG_ID_TAG}` = '{self.log_id}'", max_results=1
        )
        if found:
            self.run_id = found[0].info.run_id
        else:
            run = client.create_run(
                self.create["experiment_id"], run_name=self.create.get("run_name"),
                tags={**tags, LOG_ID_TAG: self.log_id}, start_time=self.create.get("start_ms"),
            )  # fmt: skip
            self.run_id = run.info.run_id
        self.save()


def apply(client: Any, run_id: str, op: dict[str, Any]) -> None:
    """One journal call against the server."""
    from mlflow.entities import Metric, Param, RunTag

    kind = op["op"]
    if kind == "params":
        client.log_batch(run_id, params=[Param(k, v) for k, v in op["params"].items()])
    elif kind == "metrics":
        metrics = [Metric(k, v, op["ms"], op.get("step") or 0) for k, v in op["metrics"].items()]
        client.log_batch(run_id, metrics=metrics)
    elif kind == "tags":
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in op["tags"].items()])
    elif kind == "artifact":
        client.log_artifact(run_id, op["path"], op.get("artifact_path"))
    elif kind == "artifacts":
        client.log_artifacts(run_id, op["path"], op.get("artifact_path"))
    elif kind == "text":
        client.log_text(run_id, op["text"], op["artifact_file"])
    elif kind == "end":
        client.set_terminated(run_id, op["status"], end_time=op["ms"])
    elif kind == "call":
        _CALLS[op["name"]](run_id, op["args"])
    else:
        raise ValueError(
            f"unknown MLflow journal call {kind!r} in a journal; was it written by a newer rerank_ray?"
        )


# Named calls a journal can hold beyond MLflow's own (registering a model): name -> fn(run_id, args).
_CALLS: dict[str, Callable[[str, dict[str, Any]], None]] = {}


def journal_call(
    name: str,
) -> Callable[[Callable[[str, dict[str, Any]], None]], Callable[[str, dict[str, Any]], None]]:
    """Register `fn(run_id, args)` as a call a journal can defer and sync can replay."""

    def register(fn: Callable[[str, dict[str, Any]], None]) -> Callable[[str, dict[str, Any]], None]:
        _CALLS[name] = fn
        return fn

    return register


def server_answers(uri: str) -> bool:
    """Whether the tracking store answers now (a local store always does)."""
    from rerank_ray.study.tracking import TrackingUnreachable, check_tracking_server

    try:
        check_tracking_server(uri, timeout_s=3.0)
    except TrackingUnreachable:
        return False
    return True


# -- the fluent API: the innermost run started in this process ---------------------------------
_STACK: list[RunLog] = []


def new_run(
    path: Path,
    tracking_uri: str,
    *,
    experiment_id: str,
    run_name: str,
    tags: dict[str, str],
    log_id: str | None = None,
) -> RunLog:
    """A run to be created (now, or at sync when the server is down); its journal is `path`."""
    if path.is_file() and RunLog.read(path, tracking_uri).pending:
        raise RuntimeError(
            f"{path} still holds MLflow calls that were never logged; run `rerank-ray sync STUDY.yaml` "
            "once the tracking server answers, then this again"
        )
    create = {"experiment_id": experiment_id, "run_name": run_name, "tags": tags, "start_ms": _now_ms()}
    run = RunLog(path, tracking_uri, log_id or secrets.token_hex(8), create)
    run.save()
    try:
        run.call({"op": "tags", "tags": {}})  # creates it (or defers)
    except LookupError:  # its parent's creation is deferred: so is its own
        run.pending.append({"op": "tags", "tags": {}})
        run.save()
    return run


@contextmanager
def active(run: RunLog, end: bool = True) -> Iterator[RunLog]:
    """Make `run` the innermost run for the block; it ends FINISHED, or FAILED on an error,
    unless `end` is False (the caller ends it)."""
    _STACK.append(run)
    status = "FAILED"
    try:
        yield run
        status = "FINISHED"
    finally:
        _STACK.remove(run)
        if end:
            end_run(run, status)


@contextmanager
def start_run(run_name: str, *, tags: dict[str, str], journal: Path | None = None) -> Iterator[RunLog]:
    """A child run of the innermost run, in its experiment, active for the block; its journal
    is `journal` (default: ``<name>.<id>.json`` beside its parent's)."""
    parent = current()
    log_id = secrets.token_hex(8)
    run = new_run(
        journal or parent.path.parent / f"{_safe(run_name)}.{log_id}.json", parent.tracking_uri,
        experiment_id=parent.create["experiment_id"], run_name=run_name,
        tags={**tags, PARENT_TAG: parent.ref}, log_id=log_id,
    )  # fmt: skip
    with active(run) as r:
        yield r


def current() -> RunLog:
    if not _STACK:
        raise RuntimeError("no MLflow run is active (start one with logbook.active or start_run)")
    return _STACK[-1]


def end_run(run: RunLog, status: str) -> None:
    run.call({"op": "end", "status": status, "ms": _now_ms()})


def log_params(params: dict[str, Any]) -> None:
    current().call({"op": "params", "params": {k: str(v) for k, v in params.items()}})


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    if metrics:
        current().call({"op": "metrics", "metrics": dict(metrics), "step": step, "ms": _now_ms()})


def set_tags(tags: dict[str, Any]) -> None:
    current().call({"op": "tags", "tags": {k: str(v) for k, v in tags.items()}})


def set_tag(key: str, value: Any) -> None:
    set_tags({key: value})


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    current().call({"op": "artifact", "path": str(Path(path).resolve()), "artifact_path": artifact_path})


def log_artifacts(path: str | Path, artifact_path: str | None = None) -> None:
    current().call({"op": "artifacts", "path": str(Path(path).resolve()), "artifact_path": artifact_path})


def log_text(text: str, artifact_file: str) -> None:
    current().call({"op": "text", "text": text, "artifact_file": artifact_file})


# -- sync ------------------------------------------------------------------------------------
def journals(study_dir: Path) -> list[Path]:
    """Every run journal of a study: the driver's runs and the trials'."""
    return sorted((study_dir / DRIVER_DIR).glob("*.json")) + sorted(study_dir.rglob(TRIAL_JOURNAL))


def sync_study(study_dir: Path, tracking_uri: str) -> tuple[int, int]:
    """Replay every pending call of the study's journals (module docstring), parents first and
    named calls (model registrations) last; returns (runs synced, calls replayed). Raises
    TrackingUnreachable when the server is still down."""
    from rerank_ray.study.tracking import check_tracking_server

    runs = [RunLog.read(p, tracking_uri) for p in journals(study_dir)]
    runs = [r for r in runs if r.pending or r.run_id is None]
    if not runs:
        return 0, 0
    check_tracking_server(tracking_uri)
    import mlflow

    import rerank_ray.study.registry  # noqa: F401  (its model registration is a named call)

    mlflow.set_tracking_uri(tracking_uri)  # a named call (registering a model) uses the fluent API
    ids = {r.log_id: r for r in (RunLog.read(p, tracking_uri) for p in journals(study_dir))}
    runs.sort(key=lambda r: r.created_at)
    for run in runs:
        _replay(run, ids, lambda op: op["op"] != "call")
    for run in runs:
        _replay(run, ids, lambda op: True)
    done = [r for r in runs if r.synced]
    log.info(
        "synced %d deferred MLflow run(s) of %s: %d call(s)",
        len(done),
        study_dir,
        sum(r.synced for r in runs),
    )
    return len(done), sum(r.synced for r in runs)


def _replay(run: RunLog, ids: dict[str, RunLog], now: Callable[[dict[str, Any]], bool]) -> None:
    """Apply `run`'s pending calls that `now` accepts, in order, each removed once applied."""
    parent = run.create["tags"].get(PARENT_TAG, "")
    if parent.startswith(LOCAL):
        known = ids.get(parent[len(LOCAL) :])
        if known is None or known.run_id is None:
            raise LookupError(
                f"run {run.create.get('run_name')!r}: its parent run {parent} was never created"
            )
        run.create["tags"][PARENT_TAG] = known.run_id
    if run.run_id is None:
        run._create()
        ids[run.log_id] = run
    while run.pending and now(run.pending[0]):  # in order: nothing passes a call left for later
        apply(run._client(), run.run_id, run.pending[0])
        run.pending.pop(0)
        run.synced += 1
        run.save()


def _now_ms() -> int:
    return int(time.time() * 1000)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:80]


def _short(e: Exception) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text[:160]


def _redact(uri: str) -> str:
    from rerank_ray.study.tracking import redact_uri

    return redact_uri(uri)
