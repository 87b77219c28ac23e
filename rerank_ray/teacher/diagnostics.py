"""What a teacher's targets can teach: statistics of its softmax targets on the training groups.

The distillation loss (``losses/listwise.py``) trains the student towards
``p_t = softmax(t / T_teacher)`` over each group, the positive at index 0. When ``p_t`` is
close to one-hot on the positive, the KL target is almost the contrastive label and
distillation cannot teach more than contrastive training does. Per teacher and temperature:

- ``mean_entropy``: mean over groups of ``-sum_j p_t,j log p_t,j`` in nats; uniform targets
  give ``ln(group_size)`` (``uniform_entropy``), one-hot targets 0;
- ``mean_p_positive``: mean of ``p_t,0``;
- ``positive_first``: fraction of groups where the positive's score is strictly above every
  negative's (a tie does not count as first);
- ``groups``, ``group_size``, ``temperature``.

``near_one_hot(stats)`` applies the documented thresholds: mean entropy below
``ONE_HOT_ENTROPY_FRACTION * ln(group_size)`` or mean p(positive) above ``ONE_HOT_P_POSITIVE``.

``add_diagnostics(scores_dir, groups_path, temperatures)`` computes them for a finished
scoring job and stores them in its ``manifest.json`` under ``"diagnostics"``:
``{"T=<temperature>": stats}``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from rerank_ray.io import write_json

# Targets "close to one-hot": entropy under a tenth of the uniform entropy, or p(positive) > 0.95.
ONE_HOT_ENTROPY_FRACTION = 0.1
ONE_HOT_P_POSITIVE = 0.95


def target_statistics(teacher_scores: np.ndarray, temperature: float) -> dict[str, float]:
    """Statistics of ``softmax(teacher_scores / temperature)`` over each group.

    `teacher_scores`: ``[groups, group_size]`` raw teacher logits, positive at index 0."""
    t = np.asarray(teacher_scores, dtype=np.float64)
    if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] < 2:
        raise ValueError(f"teacher scores must be [groups, group_size >= 2], got shape {t.shape}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    logits = t / temperature
    log_p = logits - logits.max(axis=1, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(axis=1, keepdims=True))
    p = np.exp(log_p)
    entropy = -(p * log_p).sum(axis=1)
    first = t[:, 0] > t[:, 1:].max(axis=1)
    return {
        "temperature": float(temperature),
        "groups": int(t.shape[0]),
        "group_size": int(t.shape[1]),
        "uniform_entropy": math.log(t.shape[1]),
        "mean_entropy": float(entropy.mean()),
        "mean_p_positive": float(p[:, 0].mean()),
        "positive_first": float(first.mean()),
    }


def near_one_hot(stats: dict[str, float]) -> bool:
    """Whether the targets are close to one-hot (the module docstring's thresholds)."""
    return (
        stats["mean_entropy"] < ONE_HOT_ENTROPY_FRACTION * stats["uniform_entropy"]
        or stats["mean_p_positive"] > ONE_HOT_P_POSITIVE
    )


def temperature_key(temperature: float) -> str:
    return f"T={temperature:g}"


def group_scores(groups_path: str | Path, scores_dir: str | Path) -> np.ndarray:
    """``[groups, group_size]`` teacher scores of the groups at `groups_path`, positive first."""
    import pandas as pd

    from rerank_ray.data.shards import attach_teacher_scores

    groups = pd.read_parquet(groups_path, columns=["query_id", "doc_ids"])
    return np.array(attach_teacher_scores(groups, scores_dir)["teacher_scores"].tolist(), dtype=np.float64)


def add_diagnostics(
    scores_dir: str | Path, groups_path: str | Path, temperatures: Iterable[float]
) -> dict[str, dict[str, float]]:
    """Compute the statistics at each temperature and store them in the job's manifest.json
    (beside `scores_dir`); returns ``{"T=<t>": stats}``."""
    scores = group_scores(groups_path, scores_dir)
    diagnostics = {temperature_key(t): target_statistics(scores, t) for t in sorted(set(temperatures))}
    manifest_path = Path(scores_dir).parent / "manifest.json"
    manifest: dict[str, Any] = json.loads(manifest_path.read_text())
    manifest["diagnostics"] = diagnostics
    write_json(manifest_path, manifest)
    return diagnostics
