"""Training groups (invariants, seeds, skipped queries) and teacher-score alignment."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from rerank_ray.config import RunConfig
from rerank_ray.data.datasets import DataError, open_collection
from rerank_ray.data.groups import GROUPS_FILE, STATS_FILE, build_groups
from rerank_ray.data.shards import MissingTeacherScores, attach_teacher_scores

TINY_DL19 = "fixtures/tiny-dl19"


def tiny_cfg(**groups) -> RunConfig:
    return RunConfig.from_dict(
        {
            "data": {"train": [TINY_DL19], "train_split": "test", "first_stage": "bm25-top20"},
            "groups": {"depth": 20, "group_size": 4, **groups},
        }
    )


def test_invariants_and_parquet(tmp_path):
    cfg = tiny_cfg()
    result = build_groups(cfg, tmp_path)
    assert result.path == tmp_path / GROUPS_FILE
    df = pd.read_parquet(result.path)
    assert list(df.columns) == ["query_id", "query", "doc_ids", "docs", "group_id", "dataset"]
    assert df["group_id"].tolist() == list(range(len(df)))
    c = open_collection(TINY_DL19, split="test", first_stage="bm25-top20")
    for row in df.itertuples():
        judged = c.qrels[row.query_id]
        doc_ids = list(row.doc_ids)
        assert len(doc_ids) == cfg.groups.group_size
        assert len(set(doc_ids)) == len(doc_ids)
        assert judged[doc_ids[0]] >= cfg.groups.positive_min_label  # positive at index 0
        for doc_id in doc_ids[1:]:
            assert judged.get(doc_id, cfg.groups.negative_max_label) <= cfg.groups.negative_max_label
        top = [d for d, _ in c.run[row.query_id][: cfg.groups.depth]]
        assert set(doc_ids) <= set(top)
        assert list(row.docs) == c.doc_texts(doc_ids)
        assert row.query == c.queries[row.query_id]
        assert row.dataset == TINY_DL19
    # One group per positive (7 + 7 + 6 + 5), capped by groups_per_query=8: no repeated positive.
    assert df.groupby("query_id").size().to_dict() == {"19335": 7, "47923": 7, "87181": 6, "87452": 5}
    assert not df.assign(pos=df["doc_ids"].str[0]).duplicated(["query_id", "pos"]).any()
    stats = json.loads((tmp_path / STATS_FILE).read_text())
    assert stats["groups_written"] == 25 == result.stats.groups_written


def test_counts_skipped_queries_tiny_dl19(tmp_path, caplog):
    # group_size 8 needs 7 negatives: within the top 20 only 19335 has enough (13);
    # 47923, 87181 and 87452 have 3, 3 and 5.
    with caplog.at_level("INFO", logger="rerank_ray.data"):
        stats = build_groups(tiny_cfg(group_size=8), tmp_path).stats
    assert stats.queries_seen == 4
    assert stats.queries_without_positive == 0
    assert stats.queries_without_enough_negatives == 3
    assert stats.without_enough_negatives_ids == {TINY_DL19: ["47923", "87181", "87452"]}
    assert stats.groups_written == 7
    assert stats.summary() in caplog.text


def test_counts_queries_without_positive_tiny_scifact(tmp_path):
    cfg = RunConfig.from_dict(
        {
            "data": {"train": ["fixtures/tiny-scifact"], "train_split": "train", "first_stage": "bm25-top10"},
            "groups": {"depth": 10, "group_size": 4, "positive_min_label": 1},
        }
    )
    stats = build_groups(cfg, tmp_path).stats
    assert stats.queries_seen == 8
    assert stats.without_positive_ids == {"fixtures/tiny-scifact": ["0"]}
    assert stats.queries_without_positive == 1
    assert stats.groups_written == 7


def test_judged_only_negatives(tmp_path):
    # Without unjudged negatives, 47923 keeps only one judged-0 candidate.
    stats = build_groups(tiny_cfg(unjudged_as_negatives=False), tmp_path).stats
    assert stats.without_enough_negatives_ids == {TINY_DL19: ["47923"]}
    df = pd.read_parquet(tmp_path / GROUPS_FILE)
    c = open_collection(TINY_DL19, split="test", first_stage="bm25-top20")
    assert all(d in c.qrels[q] for q, ids in zip(df.query_id, df.doc_ids, strict=True) for d in ids)


def test_no_groups_is_an_error(tmp_path):
    with pytest.raises(DataError, match="no training groups"):
        build_groups(tiny_cfg(group_size=20), tmp_path)


def test_seeded(tmp_path):
    a = pd.read_parquet(build_groups(tiny_cfg(seed=1), tmp_path / "a").path)
    b = pd.read_parquet(build_groups(tiny_cfg(seed=1), tmp_path / "b").path)
    c = pd.read_parquet(build_groups(tiny_cfg(seed=2), tmp_path / "c").path)
    assert a["doc_ids"].map(list).tolist() == b["doc_ids"].map(list).tolist()
    assert a["doc_ids"].map(list).tolist() != c["doc_ids"].map(list).tolist()


def test_max_queries(tmp_path):
    stats = build_groups(tiny_cfg(max_queries=2), tmp_path).stats
    assert stats.queries_seen == 2
    assert set(pd.read_parquet(tmp_path / GROUPS_FILE)["query_id"]) == {"19335", "47923"}


def _by_query(df: pd.DataFrame) -> dict:
    return {
        (d, q): [list(x) for x in part["doc_ids"]]
        for (d, q), part in df.groupby(["dataset", "query_id"], sort=False)
    }


def test_reference_dl20_dl21_and_order_independence(tmp_path):
    # The reference setting: DL20 + DL21, label >= 2 positives, groups of 8 from the BM25 top 100.
    cfg = RunConfig()
    result = build_groups(cfg, tmp_path / "a")
    assert result.stats.groups_written == 660
    assert result.stats.queries_with_groups == 103
    assert result.stats.queries_without_positive == 4
    swapped = cfg.model_copy(update={"data": cfg.data.model_copy(update={"train": cfg.data.train[::-1]})})
    other = build_groups(swapped, tmp_path / "b")
    assert _by_query(pd.read_parquet(result.path)) == _by_query(pd.read_parquet(other.path))


# ---------------------------------------------------------------------------------------------
# Teacher scores


def _groups() -> pd.DataFrame:
    return pd.DataFrame(
        {"query_id": ["q1", "q2"], "doc_ids": [["a", "b", "c"], ["d", "a"]], "group_id": [0, 1]}
    )


def test_attach_teacher_scores(tmp_path):
    scores = pd.DataFrame(
        {
            "query_id": ["q1", "q1", "q1", "q2", "q2", "q3"],
            "doc_id": ["c", "a", "b", "a", "d", "a"],
            "score": [3.0, 1.0, 2.0, -1.0, 5.0, 9.0],
        }
    )
    scores.to_parquet(tmp_path / "scores.parquet")
    out = attach_teacher_scores(_groups(), tmp_path / "scores.parquet")
    assert out["teacher_scores"].tolist() == [[1.0, 2.0, 3.0], [5.0, -1.0]]
    assert "teacher_scores" not in _groups()
    # A folder of Parquet shards (what `rerank-ray score` writes) reads the same.
    (tmp_path / "scores").mkdir()
    scores[:3].to_parquet(tmp_path / "scores" / "part-0.parquet")
    scores[3:].to_parquet(tmp_path / "scores" / "part-1.parquet")
    assert attach_teacher_scores(_groups(), tmp_path / "scores").equals(out)


def test_missing_teacher_scores(tmp_path):
    scores = pd.DataFrame({"query_id": ["q1", "q1"], "doc_id": ["a", "b"], "score": [1.0, 2.0]})
    scores.to_parquet(tmp_path / "scores.parquet")
    with pytest.raises(MissingTeacherScores) as err:
        attach_teacher_scores(_groups(), tmp_path / "scores.parquet")
    message = str(err.value)
    assert "3 of 5 (query_id, doc_id) pairs" in message
    assert "('q1', 'c')" in message and "rerank-ray score" in message


def test_duplicated_teacher_scores(tmp_path):
    scores = pd.DataFrame({"query_id": ["q1", "q1"], "doc_id": ["a", "a"], "score": [1.0, 2.0]})
    scores.to_parquet(tmp_path / "scores.parquet")
    with pytest.raises(DataError, match="duplicated"):
        attach_teacher_scores(_groups(), tmp_path / "scores.parquet")
