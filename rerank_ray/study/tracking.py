"""MLflow conventions of a study, in one place.

- One experiment (``base.mlflow.experiment``), created by the driver before any trial starts
  (concurrent trials would race to create it).
- One parent run per study (tag ``role=study``); one nested child run per trial (``role=trial``)
  and per study teacher (``role=teacher``), linked by MLflow's ``mlflow.parentRunId`` tag.
- Child tags: ``study``, ``strategy``, ``student``, ``teacher`` (``none`` for contrastive) and
  ``seed``, the same words as the YAML and the report.
- Params: the run's resolved config flattened with dots (``loss.name``, ``model.num_layers``).
- Metrics: evaluation keys from ``rerank_ray.evaluation.metrics.mlflow_key``
  (``dl19/nDCG_10``); training history under ``train/``; cost under ``cost/``.
- Artifacts: ``config/run_config.yaml``, ``eval/`` (TREC runs, per-query metrics,
  metrics.json), ``teacher_scores/manifest.json``; on the parent: ``study.yaml``,
  ``forecast.json``, the report.
- The parent run's description (``mlflow.note.content``) is the report (table first, then
  significance, costs and the rest), cut to MLflow's tag limit, so the answer is readable on
  the run's first page.
- Opening the comparison: MLflow 3.17's UI does not read the experiment-kind tag to choose the
  experiment page. Its bundle derives the experiment kind from a *workflow type*, read from
  the URL parameter ``workflowType`` (``genai`` or ``machine_learning``) or else the browser's
  local storage key ``mlflow.workflowType``, whose default is ``genai``: hence a study opened
  from the experiment list lands on the GenAI overview. :func:`experiment_url` is the link
  that opens the runs table in model-training mode; the project prints it. The tag
  ``mlflow.experimentKind=custom_model_development`` is still set, for MLflow versions and
  tools that read it.
- A tracking server is checked before a study starts (:func:`check_tracking_server`: one GET
  of its ``/health``, a few seconds' timeout), so an unreachable server costs seconds, not
  MLflow's minutes of retries.
- A tracking URI may embed credentials (``https://user:password@host``, ``?token=...``): it is
  logged, printed and saved only through :func:`redact_uri` (params, saved configs, logs).
"""

from __future__ import annotations

import copy
import functools
import logging
import re
import secrets
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from rerank_ray.stopping import on_stop, stop_reason

log = logging.getLogger("rerank_ray.study")

REDACTED = "***"
HEALTH_TIMEOUT_S = 5.0


class TrackingUnreachable(RuntimeError):
    """The MLflow tracking server does not answer."""


# Query parameters whose values are secrets (access tokens, signed-URL signatures, passwords).
SECRET_PARAM = re.compile(r"token|pass|secret|key|sig|credential|auth", re.IGNORECASE)


def redact_uri(uri: str) -> str:
    """`uri` with its password (or a user-only token) and secret query values replaced by
    ``***``; a URI without credentials comes back unchanged.

    ``https://alice:s3cret@host:5000/?token=abc&x=1`` -> ``https://alice:***@host:5000/?token=***&x=1``;
    ``https://ghp_token@host`` -> ``https://***@host``."""
    parts = urlsplit(uri)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0] + ":" if ":" in userinfo else ""
        netloc = f"{user}{REDACTED}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(SECRET_PARAM.search(k) for k, _ in pairs):
            query = urlencode([(k, REDACTED if SECRET_PARAM.search(k) else v) for k, v in pairs], safe="*")
    if (netloc, query) == (parts.netloc, parts.query):
        return uri
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def redact_config(config: dict[str, Any]) -> dict[str, Any]:
    """A copy of a config dict (RunConfig / StudyConfig ``to_dict()``) whose ``tracking_uri``
    values, at any depth, pass through :func:`redact_uri`: what is saved or logged."""
    out = copy.deepcopy(config)
    for key, value in out.items():
        if isinstance(value, dict):
            out[key] = redact_config(value)
        elif key == "tracking_uri" and isinstance(value, str):
            out[key] = redact_uri(value)
    return out


PARENT_TAG = "mlflow.parentRunId"
ROLE = "role"


def flatten_params(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": "1"}``; lists become their string form; tracking URIs
    are redacted (:func:`redact_config`)."""
    out: dict[str, str] = {}
    for key, value in redact_config(d).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten_params(value, prefix=f"{name}."))
        else:
            out[name] = str(value)
    return out


def check_tracking_server(uri: str, timeout_s: float = HEALTH_TIMEOUT_S) -> None:
    """One GET of an http(s) tracking server's ``/health`` within `timeout_s`; any HTTP answer
    (even 401) proves it is up. TrackingUnreachable names the (redacted) URI and what happened.
    Other stores (``sqlite://``, a folder) have no server to check."""
    import urllib.error
    import urllib.request

    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https"):
        return
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    netloc += f":{parts.port}" if parts.port else ""
    health = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/") + "/health", "", ""))
    try:
        with urllib.request.urlopen(health, timeout=timeout_s):
            return
    except urllib.error.HTTPError:
        return  # it answered
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise TrackingUnreachable(
            f"the MLflow tracking server {redact_uri(uri)} is not reachable ({type(reason).__name__}: "
            f"{reason}; GET {redact_uri(health)}, {timeout_s:g} s timeout)"
        ) from None


@contextmanager
def study_run(experiment_id: str, name: str, study_dir: Path, tracking_uri: str) -> Iterator[Any]:
    """The study's parent run (a ``logbook.RunLog`` journaled under ``<study>/mlflow/``),
    active for the block. A study that is stopped (Ctrl-C, or SIGTERM from `ray job stop`:
    ``stopping.py``) ends KILLED, with its running child runs, and tagged ``interrupted``, so it
    never reads as FINISHED; a rerun resumes it as a new parent run."""
    from rerank_ray.study import logbook

    log_id = secrets.token_hex(8)
    parent = logbook.new_run(
        study_dir / logbook.DRIVER_DIR / f"study.{log_id}.json", tracking_uri,
        experiment_id=experiment_id, run_name=name, tags={"role": "study", "study": name}, log_id=log_id,
    )  # fmt: skip
    if parent.run_id is None:
        raise TrackingUnreachable(f"the MLflow tracking server {redact_uri(tracking_uri)} stopped answering")
    killed = functools.partial(mark_killed, parent.run_id, experiment_id)
    with on_stop(killed), logbook.active(parent, end=False):
        try:
            yield parent
        except BaseException as e:
            why = stop_reason(e)
            if why is not None:
                killed(why)
            else:
                logbook.end_run(parent, "FAILED")
            raise
    logbook.end_run(parent, "FINISHED")


def mark_killed(parent_id: str, experiment_id: str, why: str) -> None:
    """End study run `parent_id` and its RUNNING child runs as KILLED, tagged ``interrupted``."""
    import mlflow

    client = mlflow.MlflowClient()
    running = client.search_runs(
        [experiment_id], f"tags.mlflow.parentRunId = '{parent_id}' and attributes.status = 'RUNNING'"
    )
    for run in running:
        client.set_terminated(run.info.run_id, "KILLED")
    client.set_tag(parent_id, "interrupted", why)
    client.set_terminated(parent_id, "KILLED")
    log.warning("study run %s marked KILLED (%s), with %d running child run(s)", parent_id, why, len(running))


def ensure_experiment(tracking_uri: str, name: str) -> str:
    """The experiment's id, created when missing (in the driver, before trials start)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    existing = client.get_experiment_by_name(name)
    if existing is not None:
        return existing.experiment_id
    # MLflow 3.17's UI ignores this tag for the page it opens (see the module docstring and
    # experiment_url); other MLflow versions and tools read it.
    return client.create_experiment(name, tags={"mlflow.experimentKind": "custom_model_development"})


# MLflow's limit on a tag value (mlflow.utils.validation.MAX_TAG_VAL_LENGTH); a note is a tag.
NOTE_LIMIT = 8000


def experiment_url(server: str, experiment_id: str) -> str:
    """The UI link that opens the experiment's runs table in model-training mode."""
    return f"{server.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def run_url(server: str, experiment_id: str, run_id: str) -> str:
    """The UI link to one run's page (its description first), in model-training mode."""
    return f"{server.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"


def report_first(report: Any) -> str:
    """A study report (``study.report.Report``) with its table first: MLflow shows the top of a
    run's description and folds the rest under "Show more"."""
    text = report.markdown_path.read_text()
    return report.table_markdown.strip() + "\n\n" + text.replace(report.table_markdown.strip(), "", 1)


def run_note(markdown: str, artifact: str = "report/report.md") -> str:
    """A run description (``mlflow.note.content``): `markdown`, cut at a line to fit the tag
    limit, with a pointer to the full `artifact` when cut."""
    if len(markdown) <= NOTE_LIMIT:
        return markdown
    tail = f"\n\n(cut here: the full text is the run's artifact `{artifact}`)"
    return markdown[: markdown.rfind("\n", 0, NOTE_LIMIT - len(tail))] + tail


def child_tags(study: str, parent_run_id: str, role: str, **extra: str) -> dict[str, str]:
    return {PARENT_TAG: parent_run_id, ROLE: role, "study": study, **extra}


def numeric(metrics: dict[str, Any]) -> dict[str, float]:
    """The finite numeric entries of a metrics dict (what MLflow's log_metrics accepts)."""
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")
    }


def pending_runs(study_dir: Path) -> int:
    """How many of a study's MLflow runs hold calls not logged yet (``study/logbook.py``)."""
    import json

    from rerank_ray.study.logbook import journals

    return sum(bool(json.loads(p.read_text())["pending"]) for p in journals(study_dir))


MLFLOW_UI_PORT = 5000  # `rerank-ray ui`'s default port


def mlflow_lines(
    tracking_uri: str, experiment: str, run_id: str | None, experiment_id: str | None = None
) -> list[str]:
    """Where a run is in MLflow, and the UI link that opens the study's runs table."""
    lines = [f"experiment {experiment!r}" + (f", parent run {run_id}" if run_id else "")]
    lines.append(f"store {redact_uri(tracking_uri)}")
    remote = tracking_uri.startswith(("http://", "https://"))
    server = redact_uri(tracking_uri) if remote else f"http://127.0.0.1:{MLFLOW_UI_PORT}"
    link = experiment_url(server, experiment_id) if experiment_id else f"{server.rstrip('/')}/#/experiments"
    lines.append(f"browse {link}" if remote else f"browse `rerank-ray ui`, then {link}")
    return lines


def mlflow_server_command(backend_store_uri: str, host: str, port: int) -> list[str]:
    """`mlflow server` over `backend_store_uri`, one worker (the UI is read by one person)."""
    return [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", backend_store_uri,
        "--host", host,
        "--port", str(port),
        "--workers", "1",
    ]  # fmt: skip
