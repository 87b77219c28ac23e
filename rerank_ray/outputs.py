"""Who may write an outputs folder: one process at a time, and only the run that owns it.

``claim_outputs(folder, identity, force=...)`` is held around a verb's work (``rerank-ray
train``, ``prepare``, ``study``):

- **Lock.** An advisory ``fcntl.flock`` on ``<folder>/.lock`` (released when the block exits or
  the process dies) stops a second process from writing the same folder; it fails at once with
  one line naming the holder's pid.
- **Identity.** ``<folder>/identity.json`` records who writes the folder: a run (its config,
  without name, output_dir, eval and mlflow, which do not change what training produces) or a
  study (its name: a rerun of a changed study retrains only what changed, by content). When
  the folder holds finished outputs (``finished``: e.g. ``model/``) of another identity, the
  claim is refused with the keys that differ, unless ``force`` (``--force``) says to replace
  them.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rerank_ray.config import training_config
from rerank_ray.io import write_json

log = logging.getLogger("rerank_ray.outputs")

LOCK_FILE = ".lock"
IDENTITY_FILE = "identity.json"
# What a finished run (model/, run.json; train_result.json before it) or study (report/,
# trials/, teachers/) leaves.
FINISHED = ("model", "run.json", "train_result.json", "report", "trials", "teachers")


class OutputsBusy(RuntimeError):
    """Another process holds the folder's lock."""


class OutputsOwned(RuntimeError):
    """The folder holds finished outputs of another run or study."""


def run_identity(run: dict[str, Any]) -> dict[str, Any]:
    """What identifies a run's outputs: its config (``RunConfig.to_dict()``) without the keys
    that do not change what it trains (name and output_dir locate it; eval, mlflow report it;
    the fault-tolerance keys say how it survives failures)."""
    config = {
        k: v for k, v in training_config(run).items() if k not in ("name", "output_dir", "eval", "mlflow")
    }
    return {"kind": "run", "config": config}


def study_identity(name: str) -> dict[str, Any]:
    return {"kind": "study", "name": name}


@contextmanager
def output_lock(folder: Path) -> Iterator[Path]:
    """Hold ``<folder>/.lock`` exclusively for the block; OutputsBusy names the holder's pid."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise OutputsBusy(
                f"{folder} is being written by process {holder} (lock {path}); wait for it to "
                "finish, stop it, or choose another name"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def differing_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return [] if old == new else [prefix or "<all>"]
    keys = sorted(set(old) | set(new))
    return [d for k in keys for d in differing_keys(old.get(k), new.get(k), f"{prefix}{k}.")]


def check_identity(folder: Path, identity: dict[str, Any], *, force: bool, finished: Sequence[str]) -> None:
    """Refuse (OutputsOwned) to let `identity` write `folder` while it holds finished outputs
    (any of `finished`) of another identity, unless `force`; then record `identity`."""
    record = folder / IDENTITY_FILE
    done = [name for name in finished if (folder / name).exists()]
    if done and not force:
        old = json.loads(record.read_text()) if record.is_file() else None
        if old != identity:
            if old is None:
                why = "written without an identity record (an older version or another tool)"
            elif old.get("kind") != identity["kind"]:
                why = f"of a {old.get('kind')}, not of a {identity['kind']}"
            else:
                keys = [k.rstrip(".") for k in differing_keys(old, identity)]
                why = f"from another config (differs at {', '.join(keys[:6])}{', ...' if len(keys) > 6 else ''})"
            raise OutputsOwned(
                f"{folder} holds finished outputs ({', '.join(done)}) {why}; rerun with the same "
                "config, choose another name, or pass --force to replace them"
            )
    if done and force:
        log.warning("--force: replacing the outputs in %s (%s)", folder, ", ".join(done))
    write_json(record, identity)


@contextmanager
def claim_outputs(
    folder: Path, identity: dict[str, Any], *, force: bool = False, finished: Sequence[str] = ()
) -> Iterator[Path]:
    """Lock `folder` and check `identity` may write it (see the module docstring)."""
    with output_lock(folder):
        check_identity(folder, identity, force=force, finished=finished)
        yield folder
