"""What decides a teacher's scores, and whether they cover the pairs: the reuse key of the
scoring job (``teacher/score.py``) and of the models trained on its scores (``train/identity.py``).

- :func:`pairs_from_groups`: the unique (query_id, doc_id) pairs of the groups with their texts,
  sorted (the data fingerprint's order);
- :func:`data_fingerprint`, :func:`teacher_fingerprint`: sha256 of the pairs, and of the
  teacher's files;
- :func:`provenance`: everything that decides the scores on disk, with ``fingerprint`` over the
  content (no paths, no sharding); :func:`same_provenance` compares two;
- :class:`Coverage`, :func:`verify_coverage`: which pairs have no score, or a non-finite one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from rerank_ray.teacher.config import ScoringConfig, TeacherModel

PAIR_COLUMNS = ["query_id", "doc_id", "query", "doc"]

# How pairs are assigned to shards (recorded in the provenance): by length_order.
SHARD_ORDER = "length"


def pairs_from_groups(groups: pd.DataFrame) -> pd.DataFrame:
    """The unique (query_id, doc_id) pairs of a groups table with their texts, sorted."""
    flat = groups[["query_id", "query", "doc_ids", "docs"]].explode(["doc_ids", "docs"], ignore_index=True)
    flat = flat.rename(columns={"doc_ids": "doc_id", "docs": "doc"})
    flat["query_id"] = flat["query_id"].astype(str)
    flat["doc_id"] = flat["doc_id"].astype(str)
    flat = flat.drop_duplicates(["query_id", "doc_id"])
    return flat[PAIR_COLUMNS].sort_values(["query_id", "doc_id"], ignore_index=True)


def data_fingerprint(pairs: pd.DataFrame) -> str:
    """sha256 of the pairs, ids and texts, in their (sorted) order."""
    h = hashlib.sha256()
    for row in pairs[PAIR_COLUMNS].itertuples(index=False):
        h.update("\t".join(row).encode())
        h.update(b"\n")
    return h.hexdigest()


def teacher_content(teacher: TeacherModel) -> dict[str, Any]:
    """What a teacher's scores depend on: its settings (not where it lies) and its files' hash."""
    return {**teacher.model_dump(mode="json", exclude={"path"}), "content": teacher_fingerprint(teacher)}


def teacher_fingerprint(teacher: TeacherModel) -> str:
    """sha256 of every file of the teacher's folder (relative path + bytes), in sorted order."""
    folder = teacher.folder()
    if not folder.is_dir():
        raise FileNotFoundError(f"teacher {teacher.kind} folder {folder} does not exist")
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode())
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class Coverage:
    """How many of the wanted pairs have a finite teacher score. `missing`: pairs with no score
    row; `nonfinite`: pairs whose score is NaN or +-inf (a teacher that overflowed, or bad
    input), named apart because the fix differs (rescore vs. score at all)."""

    pairs_expected: int
    pairs_scored: int
    missing: list[tuple[str, str]]
    nonfinite: list[tuple[str, str]] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.missing and not self.nonfinite

    def summary(self) -> str:
        if self.complete:
            return f"all {self.pairs_expected} pairs scored"
        problems = []
        if self.nonfinite:
            problems.append(
                f"{len(self.nonfinite)} of {self.pairs_expected} pairs have non-finite teacher scores "
                f"(NaN/inf), e.g. {self.nonfinite[:3]}"
            )
        if self.missing:
            problems.append(
                f"{len(self.missing)} of {self.pairs_expected} pairs have no teacher score, "
                f"e.g. {self.missing[:3]}"
            )
        return "; ".join(problems)


def verify_coverage(pairs: pd.DataFrame, scores: pd.DataFrame) -> Coverage:
    """Which of `pairs` (query_id, doc_id) have no score row in `scores`, and which have a
    non-finite (NaN/inf) one."""
    keys = zip(scores["query_id"].astype(str), scores["doc_id"].astype(str), strict=True)
    finite = dict(zip(keys, np.isfinite(scores["score"].to_numpy(dtype="float64")), strict=True))
    wanted = list(zip(pairs["query_id"], pairs["doc_id"], strict=True))
    missing = [p for p in wanted if p not in finite]
    nonfinite = [p for p in wanted if p in finite and not finite[p]]
    scored = len(wanted) - len(missing) - len(nonfinite)
    return Coverage(pairs_expected=len(wanted), pairs_scored=scored, missing=missing, nonfinite=nonfinite)


def provenance(teacher: TeacherModel, pairs: pd.DataFrame, scoring: ScoringConfig) -> dict[str, Any]:
    """What decides the scores on disk; two jobs with equal provenance give the same shards."""
    lengths = teacher.settings()
    prov = {
        "teacher": {
            "kind": teacher.kind,
            "path": str(teacher.path),
            "fingerprint": teacher_fingerprint(teacher),
        },
        "data_fingerprint": data_fingerprint(pairs),
        **lengths,
        "dtype": scoring.dtype,
        "count": len(pairs),
        "shard_size": scoring.shard_size,
        "shards": -(-len(pairs) // scoring.shard_size),
        "shard_order": SHARD_ORDER,
    }
    # Content only (no paths, no sharding): what a model trained on these scores depends on.
    content = {k: v for k, v in prov.items() if k not in ("shard_size", "shards")}
    content["teacher"] = {k: v for k, v in prov["teacher"].items() if k != "path"}
    return {**prov, "fingerprint": hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()}


def same_provenance(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two provenances (a job's, a manifest's) give the same shards."""
    keys = (
        "teacher",
        "data_fingerprint",
        "max_length",
        "query_max_length",
        "scale",
        "dtype",
        "count",
        "shard_size",
        "shard_order",
    )
    return all(a.get(k) == b.get(k) for k in keys)
