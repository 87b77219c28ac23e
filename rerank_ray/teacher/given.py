"""Teachers the study does not train: a published reranker, or a file of precomputed scores.

Both end where every teacher ends, so training reads them the same way: a folder ``out_dir``
with ``scores/part-*.parquet`` (``query_id: str, doc_id: str, score: float64``; raw scores,
higher = more relevant) and ``manifest.json`` (see ``teacher/score.py``).

- :func:`import_reranker` saves a reranker from any source (local ``save_pretrained`` folder,
  installed weights package, hub id when online) as this project's reranker folder, once:
  ``<teacher>/model/`` plus ``source.json``, whose key is the content hash of the source's
  files and the ModelConfig. The saved folder is then scored like any saved cross-encoder.
- :func:`import_scores` checks a precomputed score Parquet (a file, or a folder of them) with
  ``data.shards.read_teacher_scores`` (the three columns, string ids, finite scores, each pair
  once: the checks training applies to any teacher scores, raising ``DataError``), then that
  every (query_id, doc_id) of the training groups is scored (``MissingTeacherScores``). The groups' pairs
  are copied into ``scores/part-00000.parquet``; the manifest records the file's path, sha256
  and row count (``teacher``), the pairs' fingerprint and the coverage. An import with the same
  file content and the same groups is reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from rerank_ray.config import ModelConfig
from rerank_ray.data.datasets import DataError
from rerank_ray.data.shards import MissingTeacherScores, read_teacher_scores
from rerank_ray.io import write_json, write_parquet
from rerank_ray.teacher.provenance import data_fingerprint, pairs_from_groups, verify_coverage
from rerank_ray.teacher.score import (
    MANIFEST,
    SCORE_COLUMNS,
    SCORES_DIR,
    ScoreResult,
    shard_path,
)

log = logging.getLogger("rerank_ray.teacher")

SOURCE_RECORD = "source.json"


def files_sha256(path: Path) -> str:
    """sha256 over a file's bytes, or over every file of a folder (relative path + bytes, sorted)."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if path.is_dir():
            h.update(str(file.relative_to(path)).encode())
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# A published reranker.


def source_folder(source: str) -> Path:
    """The local folder of a model source; a hub id is downloaded (online) or found in the cache."""
    from rerank_ray.models.sources import resolve_source

    resolved = Path(resolve_source(source))
    if resolved.is_dir():
        return resolved
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(source))


def import_reranker(model: ModelConfig, out_dir: Path) -> Path:
    """Save the reranker `model` describes (``model.source``, pretrained) to ``out_dir/model``
    and return that folder; reused while the source's files and `model` are unchanged."""
    from rerank_ray.models import build_model

    out_dir = Path(out_dir)
    key = {
        "source": model.source,
        "source_sha256": files_sha256(source_folder(model.source)),
        "model": model.model_dump(mode="json"),
    }
    record = out_dir / SOURCE_RECORD
    saved = out_dir / "model"
    if record.is_file() and json.loads(record.read_text()).get("key") == key and saved.is_dir():
        log.info("teacher %s: reusing the saved copy in %s", model.source, saved)
        return saved
    if record.is_file():
        record.unlink()
    build_model(model).save(saved)
    write_json(record, {"key": key, "saved_sha256": files_sha256(saved)})
    return saved


# ---------------------------------------------------------------------------------------------
# Precomputed scores.


def import_scores(path: Path, groups_path: Path, out_dir: Path) -> ScoreResult:
    """Check the score file at `path` against the groups at `groups_path` and write the groups'
    scores to `out_dir` in the teacher-score layout (see the module docstring)."""
    path, out_dir = Path(path).resolve(), Path(out_dir).resolve()
    if not path.exists():
        raise DataError(f"teacher score file {path} does not exist; give a Parquet file or folder of them")
    pairs = pairs_from_groups(pd.read_parquet(groups_path))
    sha256 = files_sha256(path)
    teacher = {"kind": "scores", "path": str(path), "sha256": sha256, "fingerprint": sha256}
    manifest_path = out_dir / MANIFEST
    fingerprint = data_fingerprint(pairs)
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        old = manifest.get("teacher") or {}
        if (
            (old.get("sha256"), old.get("path")) == (sha256, str(path))
            and manifest.get("data_fingerprint") == fingerprint
            and shard_path(out_dir, 0).is_file()
        ):
            log.info("teacher scores from %s are up to date in %s; reusing them", path, out_dir)
            return ScoreResult(path=out_dir / SCORES_DIR, manifest=manifest, reused=True)
        manifest_path.unlink()
    # The same checks training applies to any teacher scores: columns, string ids, finite, once.
    scores = read_teacher_scores(path)
    teacher["rows"] = len(scores)
    coverage = verify_coverage(pairs, scores)
    if not coverage.complete:
        raise MissingTeacherScores(
            f"teacher score file {path}: {coverage.summary()} of the training groups; score every "
            "pair of the groups (rerank-ray prepare writes them) and rerun"
        )
    wanted = pairs[["query_id", "doc_id"]].merge(scores[SCORE_COLUMNS], on=["query_id", "doc_id"], how="left")
    _write(out_dir, wanted)
    manifest = _manifest(teacher, fingerprint, len(pairs), coverage.pairs_scored, str(groups_path))
    write_json(manifest_path, manifest)
    log.info("teacher scores: %d pairs from %s -> %s", len(pairs), path, out_dir / SCORES_DIR)
    return ScoreResult(path=out_dir / SCORES_DIR, manifest=manifest, shards_scored=0)


def _write(out_dir: Path, scores: pd.DataFrame) -> None:
    folder = out_dir / SCORES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("part-*.parquet"):
        stale.unlink()
    write_parquet(shard_path(out_dir, 0), scores[SCORE_COLUMNS])


def _manifest(
    teacher: dict[str, Any], fingerprint: str, count: int, scored: int, source: str
) -> dict[str, Any]:
    return {
        "teacher": teacher,
        "data_fingerprint": fingerprint,
        "count": count,
        "shards": 1,
        "source": source,
        "coverage": {"pairs_expected": count, "pairs_scored": scored},
        # Nothing was scored here: the cost was paid where the file was made.
        "cost": {
            "wall_s": 0.0,
            "pairs_scored_now": 0,
            "pairs_per_s": None,
            "cpu_hours": 0.0,
            "gpu_hours": 0.0,
        },
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
