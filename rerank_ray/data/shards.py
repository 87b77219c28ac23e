"""From the groups table to what the training loop reads.

``attach_teacher_scores(groups, scores_path)`` adds ``teacher_scores: list<float64>``, aligned
with ``doc_ids`` (so the positive's score is at index 0), taken from a teacher-scores Parquet
file with columns ``query_id: str, doc_id: str, score: float64`` (raw logits, not
probabilities). Every (query_id, doc_id) pair of every group must be scored.

``groups_to_ray_dataset(df)`` turns the table into the ``ray.data.Dataset`` handed to
``TorchTrainer(datasets={"train": ...})``. Batches from ``iter_batches(batch_format="numpy")``
hold the columns ``query`` (str), ``docs`` (one array of group_size texts per row) and, when
attached, ``teacher_scores`` (one float array per row), plus the id columns.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from rerank_ray.data.datasets import DataError

if TYPE_CHECKING:
    import ray.data

SCORE_COLUMNS = ["query_id", "doc_id", "score"]


class MissingTeacherScores(DataError):
    """Some (query_id, doc_id) pairs of the groups have no teacher score."""


def attach_teacher_scores(groups: pd.DataFrame, scores_path: str | Path) -> pd.DataFrame:
    """A copy of `groups` with ``teacher_scores`` aligned with ``doc_ids``."""
    scores = pd.read_parquet(scores_path)
    absent = [c for c in SCORE_COLUMNS if c not in scores.columns]
    if absent:
        raise DataError(
            f"teacher scores {scores_path} lack column(s) {absent}; expected {SCORE_COLUMNS}, "
            f"found {list(scores.columns)}"
        )
    duplicated = scores.duplicated(["query_id", "doc_id"])
    if duplicated.any():
        example = scores.loc[duplicated, ["query_id", "doc_id"]].head(3).to_records(index=False).tolist()
        raise DataError(
            f"teacher scores {scores_path} hold {int(duplicated.sum())} duplicated (query_id, doc_id) "
            f"pairs, e.g. {example}; each pair must be scored once"
        )
    lookup = dict(
        zip(
            zip(scores["query_id"].astype(str), scores["doc_id"].astype(str), strict=True),
            scores["score"].astype("float64"),
            strict=True,
        )
    )
    aligned: list[list[float]] = []
    missing: list[tuple[str, str]] = []
    for query_id, doc_ids in zip(groups["query_id"], groups["doc_ids"], strict=True):
        row = []
        for doc_id in doc_ids:
            score = lookup.get((query_id, doc_id))
            if score is None:
                missing.append((query_id, doc_id))
                score = float("nan")
            row.append(float(score))
        aligned.append(row)
    if missing:
        total = sum(len(d) for d in groups["doc_ids"])
        raise MissingTeacherScores(
            f"{len(missing)} of {total} (query_id, doc_id) pairs in the groups have no teacher score "
            f"in {scores_path}, e.g. {missing[:5]}; run `rerank-ray score` on these groups / check the "
            "teacher scored these groups (same groups file, same data.train)"
        )
    out = groups.copy()
    out["teacher_scores"] = aligned
    return out


def groups_to_ray_dataset(df: pd.DataFrame) -> ray.data.Dataset:
    """The groups (with or without teacher scores) as a Ray dataset, one row per group."""
    import ray.data

    return ray.data.from_pandas(df)
