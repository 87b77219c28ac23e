"""Teacher target diagnostics on hand-computed groups, and their place in the scores manifest."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from rerank_ray.teacher.diagnostics import add_diagnostics, near_one_hot, target_statistics


def test_target_statistics_by_hand():
    # Group 1: equal scores -> p = (1/2, 1/2), entropy ln 2, positive not strictly first.
    # Group 2: (ln 3, 0) -> p = (3/4, 1/4), entropy -(3/4 ln 3/4 + 1/4 ln 1/4) = 0.5623.
    scores = np.array([[0.0, 0.0], [math.log(3.0), 0.0]])
    stats = target_statistics(scores, temperature=1.0)
    h2 = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert stats["mean_entropy"] == pytest.approx((math.log(2) + h2) / 2)
    assert stats["mean_p_positive"] == pytest.approx((0.5 + 0.75) / 2)
    assert stats["positive_first"] == pytest.approx(0.5)
    assert (stats["groups"], stats["group_size"]) == (2, 2)
    assert stats["uniform_entropy"] == pytest.approx(math.log(2))
    # T = 2 halves the logits: (2 ln 3, 0) at T = 2 is the (ln 3, 0) group at T = 1.
    assert target_statistics(np.array([[2 * math.log(3.0), 0.0]]), 2.0)["mean_p_positive"] == pytest.approx(
        0.75
    )


def test_near_one_hot_thresholds():
    base = {"uniform_entropy": math.log(8), "mean_entropy": 1.0, "mean_p_positive": 0.5}
    assert not near_one_hot(base)
    assert near_one_hot({**base, "mean_entropy": 0.09 * math.log(8)})
    assert near_one_hot({**base, "mean_p_positive": 0.96})
    # Large logit gaps are one-hot; the statistics stay finite.
    stats = target_statistics(np.array([[500.0, 0.0, -500.0]]), 1.0)
    assert stats["mean_p_positive"] == pytest.approx(1.0) and near_one_hot(stats)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="group_size >= 2"):
        target_statistics(np.zeros((3, 1)), 1.0)
    with pytest.raises(ValueError, match="temperature"):
        target_statistics(np.zeros((3, 2)), 0.0)


def test_add_diagnostics_aligns_scores_with_groups_and_writes_the_manifest(tmp_path):
    groups = pd.DataFrame({"query_id": ["q1"], "doc_ids": [["pos", "neg"]]})
    groups.to_parquet(tmp_path / "groups.parquet")
    (tmp_path / "job" / "scores").mkdir(parents=True)
    # Stored in (query_id, doc_id) order, not group order: the positive must still come first.
    pd.DataFrame(
        {"query_id": ["q1", "q1"], "doc_id": ["neg", "pos"], "score": [0.0, math.log(3.0)]}
    ).to_parquet(tmp_path / "job" / "scores" / "part-00000.parquet")
    (tmp_path / "job" / "manifest.json").write_text(json.dumps({"count": 2}))
    out = add_diagnostics(tmp_path / "job" / "scores", tmp_path / "groups.parquet", [1.0, 1.0, 2.0])
    assert set(out) == {"T=1", "T=2"}
    manifest = json.loads((tmp_path / "job" / "manifest.json").read_text())
    assert manifest["count"] == 2 and manifest["diagnostics"]["T=1"]["mean_p_positive"] == pytest.approx(0.75)
