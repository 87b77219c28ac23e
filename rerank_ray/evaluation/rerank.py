"""Rerank a first-stage run with any scorer, and write TREC run files.

``rerank(score_fn, collection, depth, batch_size)`` takes each query's first ``depth``
first-stage candidates, scores every (query, document) pair with
``score_fn(queries: list[str], docs: list[str]) -> list[float]`` (raw scores, higher = more
relevant) and returns ``{query_id: [(doc_id, score), ...]}`` sorted by score, descending (ties
keep first-stage order). Only the reranked top ``depth`` is returned;
``with_first_stage_tail(reranked, collection)`` appends each query's remaining candidates in
first-stage order, below the reranked ones: the full list that is evaluated and written.

Ties are broken one way everywhere: by first-stage rank. ``write_trec_run`` writes the scores
made strictly decreasing (``metrics.strictly_decreasing``: sorted by score, rounded to float32,
trec_eval's precision, and a tied score becomes the next float32 below the one above it), and ``metrics.evaluate_run`` ranks a list the
same way, so the metric computed in memory is the metric of the written file.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from rerank_ray.data.datasets import Collection, DataError
from rerank_ray.evaluation.metrics import strictly_decreasing
from rerank_ray.io import atomic_path
from rerank_ray.teacher.score import length_order

ScoreFn = Callable[[list[str], list[str]], Sequence[float]]

# Pairs handed to score_fn per call, in units of batch_size: pairs are sorted by length over
# the whole suite first, so this only sets how often the bar moves.
CHUNK_BATCHES = 16


def rerank(
    score_fn: ScoreFn, collection: Collection, depth: int, batch_size: int, *, desc: str | None = None
) -> dict[str, list[tuple[str, float]]]:
    pairs = candidates(collection, depth)
    queries = [collection.queries[q] for q, _ in pairs]
    docs = collection.doc_texts([d for _, d in pairs])
    # Longest first (characters) over the whole suite, so each chunk holds pairs of similar
    # length; the scorer then cuts a chunk's forward passes by token count. The teacher scoring
    # job uses the same order for its shards; its blocks are other slices of it, so a pair's
    # batch can differ there, and its score by float rounding.
    order = length_order(queries, docs, [q for q, _ in pairs], [d for _, d in pairs])
    scores = [0.0] * len(pairs)
    chunk = batch_size * CHUNK_BATCHES
    with tqdm(total=len(pairs), desc=desc or collection.name, unit="pair") as bar:
        for start in range(0, len(order), chunk):
            part = order[start : start + chunk]
            got = [float(s) for s in score_fn([queries[i] for i in part], [docs[i] for i in part])]
            if len(got) != len(part):
                raise ValueError(f"score_fn returned {len(got)} scores for {len(part)} pairs")
            if not all(math.isfinite(s) for s in got):
                raise ValueError(f"score_fn returned NaN or inf scores ({collection.name}, pairs {start}..)")
            for i, s in zip(part, got, strict=True):
                scores[i] = s
            bar.update(len(part))
    return ranked(pairs, scores)


def candidates(collection: Collection, depth: int) -> list[tuple[str, str]]:
    """``(query_id, doc_id)`` of each query's first `depth` candidates, in first-stage order."""
    missing = [q for q in collection.run if q not in collection.queries]
    if missing:
        raise DataError(
            f"{collection.name}: the run has {len(missing)} queries without text, e.g. {missing[:5]}; "
            "add their texts to the queries file, or drop them from the run"
        )
    return [(query_id, doc_id) for query_id, top in collection.run.items() for doc_id, _ in top[:depth]]


def ranked(pairs: Sequence[tuple[str, str]], scores: Sequence[float]) -> dict[str, list[tuple[str, float]]]:
    """The run of scored `pairs` (in first-stage order): each query's documents by score, descending."""
    run: dict[str, list[tuple[str, float]]] = {}
    for (query_id, doc_id), score in zip(pairs, scores, strict=True):
        run.setdefault(query_id, []).append((doc_id, score))
    for docs in run.values():
        docs.sort(key=lambda pair: -pair[1])
    return run


def with_first_stage_tail(
    reranked: Mapping[str, Sequence[tuple[str, float]]], collection: Collection
) -> dict[str, list[tuple[str, float]]]:
    """Each query's reranked candidates, then its other first-stage candidates in first-stage
    order: so a measure deeper than the rerank depth (R@100 after reranking the top 10) is
    computed on the whole candidate list, not on the top 10. The k-th candidate of the tail
    scores ``lowest reranked score - k``, below every reranked one (the reranker's and the first
    stage's scores are not on one scale)."""
    run: dict[str, list[tuple[str, float]]] = {}
    for query_id, ranked in collection.run.items():
        head = list(reranked.get(query_id, []))
        seen = {doc_id for doc_id, _ in head}
        lowest = min((score for _, score in head), default=0.0)
        tail = [doc_id for doc_id, _ in ranked if doc_id not in seen]
        run[query_id] = head + [(doc_id, lowest - k) for k, doc_id in enumerate(tail, start=1)]
    return run


def first_stage(collection: Collection, depth: int | None = None) -> dict[str, list[tuple[str, float]]]:
    """The first-stage run itself (cut at `depth`, None: whole): the baseline of every reranker."""
    return {query_id: list(ranked[:depth]) for query_id, ranked in collection.run.items()}


def write_trec_run(run: Mapping[str, Sequence[tuple[str, float]]], path: str | Path, tag: str) -> Path:
    """``query_id Q0 doc_id rank score tag`` lines, ranked by score (ties in the given order) with
    the scores made strictly decreasing float32 values (``metrics.strictly_decreasing``, written
    exactly), so trec_eval on the file ranks exactly as ``metrics.evaluate_run`` does."""
    if not tag or any(c.isspace() for c in tag):
        raise ValueError(f"a TREC run tag must be one non-empty word, got {tag!r}")
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        for query_id, ranked in run.items():
            for rank, (doc_id, score) in enumerate(strictly_decreasing(ranked), start=1):
                # The shortest text that reads back as the same float32 (trec_eval's precision).
                f.write(f"{query_id} Q0 {doc_id} {rank} {np.float32(score)} {tag}\n")
    return path
