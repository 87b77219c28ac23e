"""From the groups table to what the training loop reads.

``attach_teacher_scores(groups, scores_path)`` adds ``teacher_scores: list<float64>``, aligned
with ``doc_ids`` (so the positive's score is at index 0), taken from a teacher-scores Parquet
file with columns ``query_id: str, doc_id: str, score: float64`` (raw logits, not
probabilities). Every (query_id, doc_id) pair of every group must be scored.

``training_dataset(groups_path, seed=..., teacher_scores=...)`` makes, in a Ray task, the
``ray.data.Dataset`` handed to ``TorchTrainer(datasets={"train": ...})`` from the groups file
(and the scores), in the run's seeded order. Batches from ``iter_batches(batch_format="numpy")``
hold the columns ``query`` (str), ``docs`` (one array of group_size texts per row) and, when
attached, ``teacher_scores`` (one float array per row), plus the id columns.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from rerank_ray.data.datasets import DataError
from rerank_ray.teacher import SCORE_COLUMNS

if TYPE_CHECKING:
    import ray.data


class MissingTeacherScores(DataError):
    """Some (query_id, doc_id) pairs of the groups have no (finite) teacher score: raised when
    attaching scores to groups and when a scoring job ends with pairs left unscored."""


def read_teacher_scores(scores_path: str | Path) -> pd.DataFrame:
    """The teacher-scores Parquet (a file or a folder of shards), checked: columns
    ``query_id: str, doc_id: str, score: float``, every score finite, each pair once.

    Row numbers in the messages are 0-based positions in the table as read."""
    scores = pd.read_parquet(scores_path)
    absent = [c for c in SCORE_COLUMNS if c not in scores.columns]
    if absent:
        raise DataError(
            f"teacher scores {scores_path} lack column(s) {absent}; expected {SCORE_COLUMNS}, "
            f"found {list(scores.columns)}"
        )
    for column in ("query_id", "doc_id"):
        _check_id_column(scores, column, scores_path)
    if not pd.api.types.is_numeric_dtype(scores["score"]) or pd.api.types.is_bool_dtype(scores["score"]):
        raise DataError(
            f"teacher scores {scores_path}: column score has type {scores['score'].dtype}; scores must "
            "be float64 raw logits"
        )
    values = scores["score"].astype("float64")
    bad = ~np.isfinite(values.to_numpy())
    if bad.any():
        rows = scores.loc[bad, SCORE_COLUMNS].head(3)
        examples = [
            f"row {i}: ({q}, {d}) {v}" for i, (q, d, v) in zip(rows.index, rows.to_numpy(), strict=True)
        ]
        raise DataError(
            f"teacher scores {scores_path} hold {int(bad.sum())} non-finite (NaN or inf) scores of "
            f"{len(scores)}, e.g. {examples}; rescore those pairs (check the teacher's dtype and inputs)"
        )
    duplicated = scores.duplicated(["query_id", "doc_id"])
    if duplicated.any():
        example = scores.loc[duplicated, ["query_id", "doc_id"]].head(3).to_records(index=False).tolist()
        raise DataError(
            f"teacher scores {scores_path} hold {int(duplicated.sum())} duplicated (query_id, doc_id) "
            f"pairs, e.g. {example}; each pair must be scored once"
        )
    return scores.assign(score=values)


def _check_id_column(scores: pd.DataFrame, column: str, scores_path: str | Path) -> None:
    """Ids are strings: a numeric id column would never match the groups' ids, so it is refused
    as what it is, not reported as missing scores."""
    ids = scores[column]
    if all(isinstance(v, str) for v in ids.head(1000)):
        return
    example = f" (e.g. {ids.iloc[0]!r})" if len(ids) else ""
    raise DataError(
        f"teacher scores {scores_path}: column {column} has type {ids.dtype}{example}; ids must be "
        "strings exactly as in the dataset: write the column from the original string ids"
    )


def _float_formatted(missing: list[tuple[str, str]], lookup: dict[tuple[str, str], float]) -> str:
    """A hint when the scores hold the missing pairs under float-formatted ids ("19335.0")."""
    keys = set(lookup)
    for query_id, doc_id in missing[:100]:
        for q, d in ((f"{query_id}.0", doc_id), (query_id, f"{doc_id}.0"), (f"{query_id}.0", f"{doc_id}.0")):
            if (q, d) in keys:
                return (
                    f"; the scores hold float-formatted ids ({(q, d)} for the groups' {(query_id, doc_id)}): "
                    "ids must be strings exactly as in the dataset, never read or written as numbers"
                )
    return ""


def attach_teacher_scores(groups: pd.DataFrame, scores_path: str | Path) -> pd.DataFrame:
    """A copy of `groups` with ``teacher_scores`` aligned with ``doc_ids``; the scores are
    checked by :func:`read_teacher_scores`."""
    scores = read_teacher_scores(scores_path)
    lookup = dict(zip(zip(scores["query_id"], scores["doc_id"], strict=True), scores["score"], strict=True))
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
            f"in {scores_path}, e.g. {missing[:5]}{_float_formatted(missing, lookup)}; run `rerank-ray "
            "score` on these groups / check the teacher scored these groups (same groups file, same data.train)"
        )
    out = groups.copy()
    out["teacher_scores"] = aligned
    return out


def count_groups_in(groups_path: str | Path) -> int:
    """The number of groups in a groups Parquet file, from its footer (no rows are read)."""
    import pyarrow.parquet as pq

    return pq.ParquetFile(groups_path).metadata.num_rows


def training_dataset(
    groups_path: str | Path, *, seed: int, teacher_scores: str | Path | None = None
) -> ray.data.Dataset:
    """The trainer's ``train`` dataset, made from the groups file (one row per group) and, when
    `teacher_scores` is given, the scores aligned with ``doc_ids``, in one seeded order
    (:func:`training_frame`), by a Ray task whose result goes to the object store and from there
    to Ray Data: the groups and scores never pass through this process. The task holds no CPU,
    so it never waits behind the trials and workers that hold them. Bad scores fail here, before
    training, with their own error (:class:`MissingTeacherScores`, ...)."""
    import ray
    import ray.data

    make = ray.remote(num_cpus=0, num_returns=2, max_retries=0)(_frame_and_size)
    frame, size = make.remote(str(groups_path), seed, None if teacher_scores is None else str(teacher_scores))
    try:
        ray.get(size)  # small; raises the task's error
    except ray.exceptions.RayTaskError as e:
        raise (e.cause if isinstance(e.cause, DataError) else e) from None
    return ray.data.from_pandas_refs([frame])


def training_frame(
    groups_path: str | Path, seed: int, teacher_scores: str | Path | None = None
) -> pd.DataFrame:
    """The groups with their teacher scores attached (when given), shuffled once with `seed`
    (``DataFrame.sample``), so shards mix queries and a run is reproducible."""
    frame = pd.read_parquet(groups_path)
    if teacher_scores is not None:
        frame = attach_teacher_scores(frame, teacher_scores)
    return frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def _frame_and_size(groups_path: str, seed: int, teacher_scores: str | None) -> tuple[pd.DataFrame, int]:
    frame = training_frame(groups_path, seed, teacher_scores)
    return frame, len(frame)
