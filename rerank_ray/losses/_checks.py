"""Input checks shared by every loss: shapes, and a teacher when one is needed."""

from __future__ import annotations

import torch


def check_scores(
    name: str, scores: torch.Tensor, teacher: torch.Tensor | None, *, needs_teacher: bool
) -> None:
    """Raise ValueError unless `scores` is [queries, group_size >= 2] and `teacher` matches it."""
    if scores.dim() != 2 or scores.shape[1] < 2:
        raise ValueError(
            f"loss {name!r} expects scores of shape [queries, group_size] with group_size >= 2 "
            f"(positive at index 0), got {tuple(scores.shape)}"
        )
    if teacher is None:
        if needs_teacher:
            raise ValueError(
                f"loss {name!r} needs teacher scores, got None; set train.teacher_scores to a "
                "Parquet file of (query_id, doc_id, score), or use loss.name=contrastive"
            )
        return
    if teacher.shape != scores.shape:
        raise ValueError(
            f"loss {name!r}: teacher scores of shape {tuple(teacher.shape)} do not match "
            f"student scores of shape {tuple(scores.shape)}"
        )
