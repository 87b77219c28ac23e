"""Rerank a first-stage run with any scorer, and write TREC run files.

``rerank(score_fn, collection, depth, batch_size)`` takes each query's first ``depth``
first-stage candidates, scores every (query, document) pair with
``score_fn(queries: list[str], docs: list[str]) -> list[float]`` (raw scores, higher = more
relevant) and returns ``{query_id: [(doc_id, score), ...]}`` sorted by score, descending (ties
keep first-stage order). Only the reranked top ``depth`` is returned: candidates below it are
dropped, the usual "rerank BM25 top-k" setting.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from tqdm.auto import tqdm

from rerank_ray.data.datasets import Collection, DataError
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
    # Longest first over the whole suite, so every batch holds pairs of similar length (the
    # scorer sorts each call again, stably, which keeps this order). The teacher scoring job
    # uses the same order, so a suite reranked there sees the same forward passes.
    order = length_order(queries, docs, [q for q, _ in pairs], [d for _, d in pairs])
    scores = [0.0] * len(pairs)
    chunk = batch_size * CHUNK_BATCHES
    with tqdm(total=len(pairs), desc=desc or collection.name, unit="pair") as bar:
        for start in range(0, len(order), chunk):
            part = order[start : start + chunk]
            got = [float(s) for s in score_fn([queries[i] for i in part], [docs[i] for i in part])]
            if len(got) != len(part):
                raise ValueError(f"score_fn returned {len(got)} scores for {len(part)} pairs")
            if any(math.isnan(s) for s in got):
                raise ValueError(f"score_fn returned NaN scores ({collection.name}, pairs {start}..)")
            for i, s in zip(part, got, strict=True):
                scores[i] = s
            bar.update(len(part))
    return ranked(pairs, scores)


def candidates(collection: Collection, depth: int) -> list[tuple[str, str]]:
    """``(query_id, doc_id)`` of each query's first `depth` candidates, in first-stage order."""
    missing = [q for q in collection.run if q not in collection.queries]
    if missing:
        raise DataError(
            f"{collection.name}: the run has {len(missing)} queries without text, e.g. {missing[:5]}"
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


def first_stage(collection: Collection, depth: int) -> dict[str, list[tuple[str, float]]]:
    """The first-stage run itself, cut at `depth`: the baseline every reranker is compared to."""
    return {query_id: list(ranked[:depth]) for query_id, ranked in collection.run.items()}


def write_trec_run(run: Mapping[str, Sequence[tuple[str, float]]], path: str | Path, tag: str) -> Path:
    """``query_id Q0 doc_id rank score tag`` lines, ranks from 1 in the given (score) order;
    scores at full precision, so trec_eval on the file orders them exactly as in memory."""
    if not tag or any(c.isspace() for c in tag):
        raise ValueError(f"a TREC run tag must be one non-empty word, got {tag!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for query_id, ranked in run.items():
            for rank, (doc_id, score) in enumerate(ranked, start=1):
                f.write(f"{query_id} Q0 {doc_id} {rank} {score!r} {tag}\n")
    return path
