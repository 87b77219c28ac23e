"""Ties broken one way everywhere (issue 9, item 5) and measures deeper than the rerank depth
(item 6): the metric computed in memory is the metric of the written run file. No Ray."""

from __future__ import annotations

import json
import math

import ir_measures
import numpy as np
import pytest

from rerank_ray.data.datasets import open_collection
from rerank_ray.evaluation.evaluate import evaluate, evaluate_scorer
from rerank_ray.evaluation.metrics import evaluate_run, strictly_decreasing
from rerank_ray.evaluation.rerank import rerank, with_first_stage_tail, write_trec_run
from rerank_ray.evaluation.suites import get_suite


def _file_metrics(collection, path, measures):
    """The run file's metrics as any trec_eval-style tool computes them (ir_measures)."""
    qrels = [ir_measures.Qrel(q, d, r) for q, j in collection.qrels.items() for d, r in j.items()]
    run = list(ir_measures.read_trec_run(str(path)))
    parsed = [ir_measures.parse_measure(m) for m in measures]
    return {str(m): v for m, v in ir_measures.calc_aggregate(parsed, qrels, run).items()}


def _collection(suite):
    s = get_suite(suite)
    return open_collection(s.dataset, split=s.split, first_stage=s.first_stage)


def _bm25_scorer(collection, transform):
    """A scorer that returns transform(BM25 score) of each pair, found through the texts."""
    lookup = {
        (collection.queries[q], text): score
        for q, ranked in collection.run.items()
        for text, (_, score) in zip(collection.doc_texts([d for d, _ in ranked]), ranked, strict=True)
    }
    return lambda queries, docs: [transform(lookup[q, d]) for q, d in zip(queries, docs, strict=True)]


def test_strictly_decreasing_keeps_the_given_order_of_ties():
    ranked = [("b", 1.0), ("a", 2.0), ("c", 1.0), ("d", 1.0), ("e", 0.5)]
    out = strictly_decreasing(ranked)
    assert [d for d, _ in out] == ["a", "b", "c", "d", "e"]  # by score; ties as given (b, c, d)
    scores = [s for _, s in out]
    assert all(x > y for x, y in zip(scores, scores[1:], strict=False))
    below = float(np.nextafter(np.float32(1.0), np.float32(0.0)))  # the next float32 below 1.0
    assert scores[1] == 1.0 and scores[2] == below
    assert scores[3] == float(np.nextafter(np.float32(below), np.float32(0.0))) and scores[4] == 0.5
    # Scores equal in float32 (trec_eval's precision) tie as well: 1 + 1e-9 is not above 1.0 there.
    out = strictly_decreasing([("x", 1.0 + 1e-9), ("y", 1.0)])
    assert out == [("x", 1.0), ("y", below)]


def test_written_ties_rank_as_given(tmp_path):
    # Before: both files said 1.0 for "zz" and "aa", and trec_eval ranked them by doc id.
    path = write_trec_run({"q": [("zz", 1.0), ("aa", 1.0), ("mm", 0.0)]}, tmp_path / "x.run", "t")
    run = list(ir_measures.read_trec_run(str(path)))
    assert [s.doc_id for s in sorted(run, key=lambda s: -s.score)] == ["zz", "aa", "mm"]
    qrels = [ir_measures.Qrel("q", "zz", 1)]
    assert ir_measures.calc_aggregate([ir_measures.parse_measure("RR@10")], qrels, run)[
        ir_measures.parse_measure("RR@10")
    ] == pytest.approx(1.0)
    assert evaluate_run({"q": {"zz": 1}}, {"q": [("zz", 1.0), ("aa", 1.0)]}, ["RR@10"])[0]["RR@10"] == 1.0


@pytest.mark.parametrize("suite", ["tiny-dl19", "dl19"])
def test_constant_scorer_equals_the_first_stage(tmp_path, suite):
    # Every score ties, so the reranked run is the first stage's order (before: tiny-dl19 0.6421
    # against the first stage's 0.7132, the ties broken by doc id).
    c = _collection(suite)
    measures = list(get_suite(suite).measures)
    first = evaluate(None, [suite], out_dir=tmp_path / "bm25").suites[suite]
    const = evaluate_scorer(lambda q, d: [0.0] * len(d), [suite], out_dir=tmp_path / "const", tag="const")
    assert const.suites[suite] == pytest.approx(first, abs=1e-12)
    assert _file_metrics(c, tmp_path / "const" / f"{suite}.run", measures) == pytest.approx(first, abs=1e-12)


def test_floor_bm25_metric_equals_its_run_file(tmp_path):
    # floor(BM25) ties often; broken by first-stage rank, it is BM25's order again. Before: 0.4981
    # in memory against 0.5058 from the run file it wrote.
    c = _collection("dl19")
    result = evaluate_scorer(
        _bm25_scorer(c, math.floor), ["dl19"], out_dir=tmp_path, tag="floor", batch_size=256
    )
    in_memory = result.suites["dl19"]
    from_file = _file_metrics(c, tmp_path / "dl19.run", get_suite("dl19").measures)
    assert in_memory == pytest.approx(from_file, abs=1e-12)
    assert round(in_memory["nDCG@10"], 4) == 0.5058  # the published BM25 figure


def test_rerank_refuses_infinite_scores():
    c = _collection("tiny-dl19")
    with pytest.raises(ValueError, match="NaN or inf"):
        rerank(lambda q, d: [math.inf] * len(d), c, depth=20, batch_size=8)


# ---------------------------------------------------------------------------------------------
# Depth: the reranked top `depth`, then the first-stage tail; R@100 is recall at 100.


def test_tail_keeps_first_stage_order_below_the_head():
    c = _collection("tiny-dl19")
    reranked = rerank(lambda q, d: [-float(len(x)) for x in d], c, depth=5, batch_size=4)
    run = with_first_stage_tail(reranked, c)
    for query_id, ranked in c.run.items():
        assert run[query_id][:5] == reranked[query_id]
        assert [d for d, _ in run[query_id][5:]] == [d for d, _ in ranked[5:]]
        scores = [s for _, s in run[query_id]]
        assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("suite, depth", [("tiny-dl19", 5), ("tiny-scifact", 2), ("scifact", 10)])
def test_recall_deeper_than_the_rerank_depth_is_the_full_lists(tmp_path, suite, depth):
    # Before: at depth 10, "R@100" was recall of the top 10, logged as scifact/R_100.
    c = _collection(suite)
    recall = next(m for m in get_suite(suite).measures if m.startswith(("R@", "R(")))
    first = evaluate(None, [suite], out_dir=tmp_path / "bm25").suites[suite][recall]
    reversed_scorer = _bm25_scorer(c, lambda s: -s)  # the worst order of the top `depth`
    result = evaluate_scorer(reversed_scorer, [suite], depth=depth, out_dir=tmp_path / "rev", tag="rev")
    assert result.suites[suite][recall] == pytest.approx(first, abs=1e-12)
    lines = (tmp_path / "rev" / f"{suite}.run").read_text().splitlines()
    assert len(lines) == sum(len(r) for r in c.run.values())
    report = json.loads((tmp_path / "rev" / "metrics.json").read_text())["suites"][suite]
    assert report["depth"] == depth
    assert _file_metrics(c, tmp_path / "rev" / f"{suite}.run", get_suite(suite).measures) == pytest.approx(
        result.suites[suite], abs=1e-12
    )


def test_only_the_top_depth_is_scored(tmp_path):
    c = _collection("tiny-dl19")
    scored = []

    def score_fn(queries, docs):
        scored.extend(docs)
        return [-float(len(d)) for d in docs]

    evaluate_scorer(score_fn, ["tiny-dl19"], depth=3, out_dir=tmp_path, tag="len")
    assert len(scored) == 4 * 3
    lines = [line.split() for line in (tmp_path / "tiny-dl19.run").read_text().splitlines()]
    assert len(lines) == 80
    for query_id, ranked in c.run.items():
        own = [cols[2] for cols in lines if cols[0] == query_id]
        assert sorted(own[:3]) == sorted(d for d, _ in ranked[:3])
        assert own[3:] == [d for d, _ in ranked[3:]]
