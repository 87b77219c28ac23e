"""Retrieval metrics through ir_measures (trec_eval semantics), and their MLflow keys.

``evaluate_run(qrels, run, measures)`` -> ``(aggregate, per_query)``:

- ``qrels``: ``{query_id: {doc_id: label}}``, **all** judgments of the split, including
  documents the run never retrieved: the ideal DCG is built from them (trec_eval semantics).
- ``run``: ``{query_id: [(doc_id, score), ...]}`` or ``{query_id: {doc_id: score}}``, ranked by
  score. In a list, equal scores keep the list's order (for a reranked run: first-stage order):
  the list goes through :func:`strictly_decreasing`, as in the run file
  :func:`rerank_ray.evaluation.rerank.write_trec_run` writes, so both give the same metric. In a
  dict, ties are broken by doc_id (trec_eval's rule).
- ``measures``: ir_measures names (``nDCG@10``, ``RR(rel=2)@10``, ``R(rel=2)@100``) or objects.
- ``aggregate``: ``{measure name: mean}`` over the **judged** queries (those in the qrels).
  A judged query without candidates in the run scores 0 on every measure (trec_eval ``-c``: a
  query the system returns nothing for is a miss, not a query to leave out); run queries
  without judgments are left out. :func:`query_coverage` counts both, for the report.
  ``per_query``: ``{query_id: {measure name: value}}``, the same judged queries.
- A run that shares no query with the qrels raises :class:`DataError`.

``mlflow_key(suite, measure)`` is the one mapping from display names to MLflow metric keys.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import ir_measures
import numpy as np
from ir_measures import Measure

from rerank_ray.data.datasets import DataError

Run = Mapping[str, Sequence[tuple[str, float]]] | Mapping[str, Mapping[str, float]]

_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. ]+")


def parse_measures(measures: Iterable[str | Measure]) -> list[Measure]:
    """ir_measures objects; a bad name raises ir_measures' own error, which names the syntax."""
    return [ir_measures.parse_measure(m) if isinstance(m, str) else m for m in measures]


def strictly_decreasing(ranked: Sequence[tuple[str, float]]) -> list[tuple[str, float]]:
    """`ranked` sorted by score, descending, ties in the given order (a stable sort), the scores
    made strictly decreasing **as float32**: trec_eval (and pytrec_eval, which ir_measures runs)
    holds a score as a C ``float``, so doubles that differ only beyond float32 precision tie
    there and are ranked by doc_id. Each score is rounded to float32, and one that is not below
    the one above it becomes the next float32 below that one (``numpy.nextafter``). Any tool that
    sorts by score then ranks ties by their position in `ranked`."""
    out: list[tuple[str, float]] = []
    above = np.float32(np.inf)
    for doc_id, score in sorted(ranked, key=lambda pair: -pair[1]):
        value = np.float32(score)
        if not value < above:
            value = np.nextafter(above, np.float32(-np.inf))
        out.append((doc_id, float(value)))
        above = value
    return out


@dataclass(frozen=True)
class QueryCoverage:
    """Which judged queries the run misses, and which run queries have no judgments."""

    judged: int  # queries in the qrels: the ones the means are over
    without_candidates: list[str]  # judged, but no candidate in the run: scored 0
    unjudged: list[str]  # in the run, not in the qrels: left out of every mean

    def summary(self) -> str:
        return (
            f"{self.judged} judged queries, {len(self.without_candidates)} of them without candidates "
            f"(scored 0){_examples(self.without_candidates)}; {len(self.unjudged)} run queries without "
            f"judgments (left out){_examples(self.unjudged)}"
        )


def _examples(ids: list[str]) -> str:
    return f", e.g. {ids[:5]}" if ids else ""


def query_coverage(qrels: Mapping[str, Mapping[str, int]], run: Run) -> QueryCoverage:
    retrieved = {query_id for query_id, ranked in run.items() if len(ranked)}
    return QueryCoverage(
        judged=len(qrels),
        without_candidates=[q for q in qrels if q not in retrieved],
        unjudged=[q for q in run if q not in qrels],
    )


def evaluate_run(
    qrels: Mapping[str, Mapping[str, int]], run: Run, measures: Iterable[str | Measure]
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    parsed = parse_measures(measures)
    coverage = query_coverage(qrels, run)
    if len(coverage.without_candidates) == coverage.judged:
        raise DataError(
            f"the run shares no query with the qrels ({len(run)} run queries{_examples(list(run))}, "
            f"{coverage.judged} judged{_examples(list(qrels))}); evaluate a run of this dataset's queries"
        )
    run_dict = {
        query_id: dict(ranked) if isinstance(ranked, Mapping) else dict(strictly_decreasing(ranked))
        for query_id, ranked in run.items()
        if query_id in qrels
    }
    qrels_dict = {query_id: dict(judged) for query_id, judged in qrels.items()}
    # ir_measures scores a judged query missing from the run 0 on every measure, and averages
    # over all judged queries: the policy above (tested in tests/unit/test_metrics.py).
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
