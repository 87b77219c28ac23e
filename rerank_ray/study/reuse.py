"""Reusing a study evaluation (``trial.evaluate_suites``) whose inputs are unchanged, keyed by content.

A model the study does not train (a zero-shot bi-encoder teacher, a given reranker) is evaluated
on every suite at every run of the study; on a resumed study that repeats minutes of scoring for
the same numbers. :func:`evaluation_key` is the sha256 of what such an evaluation reads:

- the model's content (its caller's fingerprint: the weights' bytes and the scoring settings);
- the evaluation config (suites, depths, measure, batch size, first-stage run overrides) and the
  suites' definitions (dataset, split, first stage, depth, measures);
- the data each suite reads: a dataset folder under the data root by the hash of its files (qrels,
  queries, corpus, runs), an ir_datasets id by its name (ir_datasets versions by id), a run-file
  override by its bytes; the ``validation`` suite by the training datasets' folders and the data
  config that says which queries are held out.

:func:`reusable` returns the stored ``eval.json`` when ``eval_key.json`` beside it holds the same
key; :func:`forget` removes the key before an evaluation starts (an interrupted one leaves no
key, so its half-rewritten files are never reused) and :func:`remember` writes it after.
Trained models are not cached here: a trial's evaluation is part of its ``run.json``
(``train/identity.py``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from rerank_ray import io
from rerank_ray.config import DataConfig, default_data_root
from rerank_ray.study.config import StudyEvalConfig
from rerank_ray.study.records import EvalSummary

log = logging.getLogger(__name__)
KEY_FILE = "eval_key.json"


def evaluation_key(model_content: dict[str, Any], eval_cfg: StudyEvalConfig, data: DataConfig) -> str:
    """sha256 of the model's content, the evaluation config and the data every suite reads."""
    from dataclasses import asdict

    from rerank_ray.evaluation.suites import known_suites

    root = data.root if data.root is not None else default_data_root()
    suites = known_suites(eval_cfg.defined())
    read: dict[str, Any] = {}
    for name in eval_cfg.suites:
        suite = suites[name]
        datasets = list(data.train) if suite.held_out else [suite.dataset]
        run_file = eval_cfg.run_files.get(name, suite.run_file)
        read[name] = {
            "suite": asdict(suite),
            "datasets": {d: _dataset_content(d, root) for d in datasets},
            "run_file": None if run_file is None else _file_content(Path(run_file), root),
        }
    key = {
        "model": model_content,
        "eval": eval_cfg.model_dump(mode="json"),
        "data": data.model_dump(mode="json", exclude={"root"}),
        "read": read,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def _dataset_content(name: str, root: Path | None) -> str:
    """A dataset folder under the data root by its files' hash; an ir_datasets id by its name."""
    from rerank_ray.train.identity import folder_sha256

    folder = None if root is None else Path(root) / name
    if folder is not None and folder.is_dir():
        return f"folder:{folder_sha256(folder)}"
    return f"ir_datasets:{name}"


def _file_content(path: Path, root: Path | None) -> str:
    from rerank_ray.train.identity import file_sha256

    if not path.is_absolute() and root is not None:
        path = Path(root) / path
    return f"file:{file_sha256(path)}" if path.is_file() else f"missing:{path}"


def reusable(out_dir: Path, key: str, what: str) -> EvalSummary | None:
    """The evaluation stored in `out_dir` when it was made from the same inputs (`key`), else
    None (logging why it is evaluated again when one was stored)."""
    stored, summary = out_dir / KEY_FILE, out_dir / "eval.json"
    if not (stored.is_file() and summary.is_file()):
        return None
    try:
        same = json.loads(stored.read_text()).get("key") == key
        evaluation = EvalSummary.from_json(json.loads(summary.read_text()))
    except (ValueError, KeyError, TypeError, AttributeError):
        log.warning("%s: ignoring an unreadable stored evaluation in %s; evaluating again", what, out_dir)
        return None
    if not same:
        log.info("%s: evaluating again, the model, the evaluation config or the data changed", what)
        return None
    log.info("%s: its evaluation in %s is up to date; reusing it", what, out_dir)
    return EvalSummary(evaluation.metrics, evaluation.scores, evaluation.measure, out_dir)


def forget(out_dir: Path) -> None:
    """Before evaluating into `out_dir`: what is there is no longer a finished evaluation."""
    (out_dir / KEY_FILE).unlink(missing_ok=True)


def remember(out_dir: Path, key: str) -> None:
    """Record that the evaluation now in `out_dir` was made from the inputs `key` stands for."""
    io.write_json(out_dir / KEY_FILE, {"key": key})
