"""Metrics against hand-computed values (ir_measures, trec_eval semantics), and MLflow keys."""

from __future__ import annotations

import math
import re

import ir_measures
import pytest

from rerank_ray.evaluation.metrics import evaluate_run, mlflow_key
from rerank_ray.evaluation.suites import SUITES, get_suite

QRELS = """\
q1 0 d1 2
q1 0 d2 0
q1 0 d3 1
q1 0 d4 3
q2 0 d5 1
q2 0 d6 1
"""
# d4 (label 3) is judged but never retrieved: it must still count in q1's ideal DCG.
RUN = """\
q1 Q0 d1 1 3.0 test
q1 Q0 d2 2 2.0 test
q1 Q0 d3 3 1.0 test
q2 Q0 d7 1 2.0 test
q2 Q0 d5 2 1.0 test
"""


def _parse():
    qrels: dict[str, dict[str, int]] = {}
    for q in ir_measures.read_trec_qrels(QRELS):
        qrels.setdefault(q.query_id, {})[q.doc_id] = q.relevance
    run: dict[str, list[tuple[str, float]]] = {}
    for s in ir_measures.read_trec_run(RUN):
        run.setdefault(s.query_id, []).append((s.doc_id, s.score))
    return qrels, run


def test_hand_computed_two_queries():
    # nDCG@10, gain = label, discount = log2(rank + 1), ideal from ALL qrels of the query:
    #   q1: DCG  = 2/log2(2) + 0/log2(3) + 1/log2(4)        = 2 + 0 + 0.5              = 2.5
    #       IDCG = 3/log2(2) + 2/log2(3) + 1/log2(4)         = 3 + 1.2618595 + 0.5      = 4.7618595
    #       nDCG = 2.5 / 4.7618595                                                      = 0.5250050
    #   q2: DCG  = 0 (d7 unjudged) + 1/log2(3)                                          = 0.6309298
    #       IDCG = 1/log2(2) + 1/log2(3)                                                = 1.6309298
    #       nDCG = 0.6309298 / 1.6309298                                                = 0.3868528
    #   mean = (0.5250050 + 0.3868528) / 2                                              = 0.4559289
    # RR(rel=2)@10: q1 d1 (label 2) at rank 1 -> 1; q2 nothing >= 2 -> 0; mean 0.5
    # RR@10 (rel >= 1): q1 -> 1; q2 d5 at rank 2 -> 0.5; mean 0.75
    # R@100: q1 {d1, d3} of {d1, d3, d4} -> 2/3; q2 {d5} of {d5, d6} -> 1/2; mean 7/12
    # R(rel=2)@100: q1 {d1} of {d1, d4} -> 1/2; q2 no relevant doc -> 0; mean 1/4
    qrels, run = _parse()
    measures = ["nDCG@10", "RR(rel=2)@10", "RR@10", "R@100", "R(rel=2)@100"]
    aggregate, per_query = evaluate_run(qrels, run, measures)
    q1 = 2.5 / (3 + 2 / math.log2(3) + 0.5)
    q2 = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert per_query["q1"]["nDCG@10"] == pytest.approx(0.5250050, abs=1e-6)
    assert per_query["q1"]["nDCG@10"] == pytest.approx(q1, abs=1e-9)
    assert per_query["q2"]["nDCG@10"] == pytest.approx(q2, abs=1e-9)
    assert aggregate["nDCG@10"] == pytest.approx(0.4559289, abs=1e-6)
    assert aggregate["RR(rel=2)@10"] == pytest.approx(0.5)
    assert aggregate["RR@10"] == pytest.approx(0.75)
    assert aggregate["R@100"] == pytest.approx(7 / 12)
    assert aggregate["R(rel=2)@100"] == pytest.approx(0.25)
    assert list(aggregate) == measures  # in the order asked


def test_unretrieved_qrels_count_in_ideal_dcg():
    qrels, run = _parse()
    del qrels["q1"]["d4"]
    aggregate, per_query = evaluate_run(qrels, run, ["nDCG@10"])
    # Without d4 the ideal is 2 + 1/log2(3): a much higher (wrong for TREC DL) score.
    assert per_query["q1"]["nDCG@10"] == pytest.approx(2.5 / (2 + 1 / math.log2(3)))
    assert per_query["q1"]["nDCG@10"] > 0.9


def test_order_comes_from_scores_and_dict_runs_work():
    qrels, run = _parse()
    shuffled = {q: list(reversed(r)) for q, r in run.items()}
    as_dict = {q: dict(r) for q, r in run.items()}
    expected, _ = evaluate_run(qrels, run, ["nDCG@10"])
    assert evaluate_run(qrels, shuffled, ["nDCG@10"])[0] == expected
    assert evaluate_run(qrels, as_dict, ["nDCG@10"])[0] == expected


def test_mlflow_key():
    assert mlflow_key("dl19", "nDCG@10") == "dl19/nDCG_10"
    assert mlflow_key("dl19", "RR(rel=2)@10") == "dl19/RR_rel_2_10"
    assert mlflow_key("dl19", ir_measures.parse_measure("R(rel=2)@100")) == "dl19/R_rel_2_100"
    assert mlflow_key("tiny-scifact", "RR@10") == "tiny-scifact/RR_10"


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_mlflow_keys_are_safe_and_distinct(suite):
    keys = [mlflow_key(suite, m) for m in SUITES[suite].measures]
    for key in keys:
        assert re.fullmatch(r"[A-Za-z0-9_\-. /]+", key), key
    assert len(set(keys)) == len(keys)
    for m in SUITES[suite].measures:
        ir_measures.parse_measure(m)  # every suite measure is a valid ir_measures name


def test_unknown_suite():
    with pytest.raises(ValueError, match="known suites"):
        get_suite("dl18")
