"""A run folder's one "finished" record, ``<run_dir>/run.json``.

``train()`` writes it when a model is exported: ``{"identity", "train": {"metrics", "wall_s"}}``
(the run's content identity, ``train/identity.py``, and what training reported). A study trial
or teacher (``study/trial.py``) then *extends* the same record with its evaluation: the keys of
``TrialSummary.to_json()`` (``name``, ``metrics``, ``scores``, ``cost``, ``model_dir``,
``eval_dir``, ``run_config``; ``identity`` is the one already there). So a folder holds one
record, a run is reusable for training when it has ``train``, and a trial is finished when the
record also has its ``scores``.

Folders written before this record have ``train_result.json`` (training) and ``trial.json``
(the trial): :func:`read_record` reads them as one record, so finished runs stay reusable, and
the first write of ``run.json`` removes them, so no second record is left to disagree.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rerank_ray.io import write_json

RECORD = "run.json"
LEGACY_TRAIN, LEGACY_TRIAL = "train_result.json", "trial.json"
BASE_KEYS = ("identity", "train")  # what training writes; everything else is the trial's


def read_record(run_dir: Path) -> dict[str, Any] | None:
    """The folder's record (``run.json``, else its two legacy files read as one), or None."""
    path = Path(run_dir) / RECORD
    if path.is_file():
        return json.loads(path.read_text())
    train_file, trial_file = Path(run_dir) / LEGACY_TRAIN, Path(run_dir) / LEGACY_TRIAL
    record: dict[str, Any] = {}
    if train_file.is_file():
        legacy = json.loads(train_file.read_text())
        record = {
            "identity": legacy.get("identity"),
            "train": {k: legacy.get(k) for k in ("metrics", "wall_s")},
        }
    if trial_file.is_file():
        record.update(json.loads(trial_file.read_text()))
    return record or None


def write_train_record(
    run_dir: Path, identity: dict[str, Any], metrics: dict[str, Any], wall_s: float
) -> None:
    """A newly trained run's record: its identity and training result, nothing of a trial."""
    _write(Path(run_dir), {"identity": identity, "train": {"metrics": metrics, "wall_s": wall_s}})


def extend_record(run_dir: Path, fields: dict[str, Any]) -> None:
    """Add a trial's evaluation (`fields`) to the trained run's record; its identity and
    training result stay as training wrote them."""
    record = read_record(run_dir)
    if record is None or "train" not in record:
        raise FileNotFoundError(
            f"{Path(run_dir) / RECORD} has no training result to extend; train the run first"
        )
    _write(Path(run_dir), {**fields, **{k: record[k] for k in BASE_KEYS if k in record}})


def unfinish(run_dir: Path) -> None:
    """Drop a trial's part of the record (it is being evaluated again), keeping the training
    part, so a failure before the new evaluation is written leaves no old result to vouch for it."""
    record = read_record(run_dir)
    if record is None:
        return
    base = {k: record[k] for k in BASE_KEYS if k in record}
    if "train" in base:
        if base != record or not (Path(run_dir) / RECORD).is_file():
            _write(Path(run_dir), base)
    else:
        forget(run_dir)


def forget(run_dir: Path) -> None:
    """Remove the record (and legacy ones): the run is no longer finished (its model is being
    replaced)."""
    for name in (RECORD, LEGACY_TRAIN, LEGACY_TRIAL):
        (Path(run_dir) / name).unlink(missing_ok=True)


def _write(run_dir: Path, record: dict[str, Any]) -> None:
    write_json(run_dir / RECORD, record, indent=1)
    for name in (LEGACY_TRAIN, LEGACY_TRIAL):
        (run_dir / name).unlink(missing_ok=True)
