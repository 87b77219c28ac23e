"""Cross-fit folds: split by query, seeded; each fold scored only by the teacher that did not see it."""

from __future__ import annotations

import pandas as pd
import pytest

from rerank_ray.teacher.crossfit import (
    FoldRecord,
    assign_folds,
    check_out_of_sample,
    merge_fold_scores,
    split_groups,
)


def test_folds_are_deterministic_balanced_and_by_query():
    ids = [f"q{i}" for i in range(10)] * 3  # repeated ids: one fold per query
    folds = assign_folds(ids, 3, seed=7)
    assert set(folds) == {f"q{i}" for i in range(10)}
    assert sorted(list(folds.values()).count(f) for f in range(3)) == [3, 3, 4]
    assert folds == assign_folds(list(reversed(ids)), 3, seed=7)  # order of the input does not matter
    assert folds != assign_folds(ids, 3, seed=8)
    with pytest.raises(ValueError, match="at least k training queries"):
        assign_folds(["q1"], 2, seed=0)


def test_split_groups_keeps_each_query_on_one_side(tmp_path):
    groups = pd.DataFrame(
        {"query_id": ["a", "a", "b", "c", "d"], "doc_ids": [["x", "y"]] * 5, "group_id": range(5)}
    )
    groups.to_parquet(tmp_path / "groups.parquet")
    folds = {"a": 0, "b": 1, "c": 0, "d": 1}
    train, scored = split_groups(tmp_path / "groups.parquet", folds, 0, tmp_path / "fold0")
    assert sorted(pd.read_parquet(train)["query_id"]) == ["b", "d"]
    assert pd.read_parquet(scored)["group_id"].tolist() == [0, 1, 3]


def fold(i: int, scored: list[str], trained: list[str], tmp_path) -> FoldRecord:
    folder = tmp_path / f"scores{i}"
    folder.mkdir()
    frame = pd.DataFrame(
        {"query_id": scored, "doc_id": ["d"] * len(scored), "score": [float(i)] * len(scored)}
    )
    frame.to_parquet(folder / "part-00000.parquet")
    return FoldRecord(i, scored, [i], trained, f"run{i}", f"model{i}", f"/m{i}", str(folder))


def test_merge_writes_one_score_file_with_folds_and_refuses_leaks(tmp_path):
    out = tmp_path / "merged"
    (out / "scores").mkdir(parents=True)
    pd.DataFrame({"query_id": ["old"], "doc_id": ["d"], "score": [9.0]}).to_parquet(
        out / "scores" / "part-00007.parquet"
    )
    folds = [fold(0, ["a"], ["b"], tmp_path), fold(1, ["b"], ["a"], tmp_path)]
    manifest = merge_fold_scores(folds, out, k=2, seed=0)
    scores = pd.read_parquet(out / "scores")
    assert scores[["query_id", "score", "fold"]].values.tolist() == [["a", 0.0, 0], ["b", 1.0, 1]]
    assert manifest["out_of_sample"] and manifest["cross_fit"]["folds"][1]["run_fingerprint"] == "run1"
    leaked = {"cross_fit": {"folds": [{"fold": 0, "scored_query_ids": ["a"], "trained_query_ids": ["a"]}]}}
    with pytest.raises(ValueError, match="scored queries its teacher trained on"):
        check_out_of_sample(leaked)
