"""Retrieval metrics through ir_measures (trec_eval semantics), and their MLflow keys.

``evaluate_run(qrels, run, measures)`` -> ``(aggregate, per_query)``:

- ``qrels``: ``{query_id: {doc_id: label}}``, **all** judgments of the split, including
  documents the run never retrieved: the ideal DCG is built from them (trec_eval semantics).
- ``run``: ``{query_id: [(doc_id, score), ...]}`` or ``{query_id: {doc_id: score}}``; as in
  trec_eval, the order is decided by the scores (ties: by doc_id), not by list position.
- ``measures``: ir_measures names (``nDCG@10``, ``RR(rel=2)@10``, ``R(rel=2)@100``) or objects.
- ``aggregate``: ``{measure name: mean}`` over the queries present in both run and qrels
  (trec_eval's default, no ``-c``); ``per_query``: ``{query_id: {measure name: value}}``.

``mlflow_key(suite, measure)`` is the one mapping from display names to MLflow metric keys.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

import ir_measures
from ir_measures import Measure

Run = Mapping[str, Sequence[tuple[str, float]]] | Mapping[str, Mapping[str, float]]

_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. ]+")


def parse_measures(measures: Iterable[str | Measure]) -> list[Measure]:
    """ir_measures objects; a bad name raises ir_measures' own error, which names the syntax."""
    return [ir_measures.parse_measure(m) if isinstance(m, str) else m for m in measures]


def evaluate_run(
    qrels: Mapping[str, Mapping[str, int]], run: Run, measures: Iterable[str | Measure]
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    parsed = parse_measures(measures)
    run_dict = {query_id: dict(ranked) for query_id, ranked in run.items()}
    qrels_dict = {query_id: dict(judged) for query_id, judged in qrels.items()}
    evaluator = ir_measures.evaluator(parsed, qrels_dict)
    per_query: dict[str, dict[str, float]] = {}
    for metric in evaluator.iter_calc(run_dict):
        per_query.setdefault(metric.query_id, {})[str(metric.measure)] = float(metric.value)
    aggregate = {str(m): float(v) for m, v in evaluator.calc_aggregate(run_dict).items()}
    # Keep the order the measures were asked in.
    aggregate = {str(m): aggregate[str(m)] for m in parsed if str(m) in aggregate}
    return aggregate, per_query


def mlflow_key(suite: str, measure: str | Measure) -> str:
    """``("dl19", "nDCG@10") -> "dl19/nDCG_10"``, ``("dl19", "RR(rel=2)@10") -> "dl19/RR_rel_2_10"``.

    MLflow keys allow only letters, digits, ``_ - . /`` and spaces; every run of other characters
    becomes one ``_``."""
    parts = [_UNSAFE.sub("_", part).strip("_") for part in (suite, str(measure))]
    return "/".join(parts)
