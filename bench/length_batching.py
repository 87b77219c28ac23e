"""Scoring throughput: batches sorted by length (what `Reranker.score` does) vs input order.

Scores the same TREC DL 2019 BM25 candidates with the same model twice, side by side in one
process, and prints pairs/s for each and their ratio. Padding is the only difference.

    python bench/length_batching.py [--layers 6] [--pairs 800] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import time

import torch

from rerank_ray.config import ModelConfig
from rerank_ray.data.datasets import open_collection
from rerank_ray.models import build_model


def unsorted_scores(model, queries, docs, batch_size):
    out = []
    with torch.no_grad():
        model.eval()
        for i in range(0, len(queries), batch_size):
            batch = model.tokenize(queries[i : i + batch_size], docs[i : i + batch_size])
            out.extend(model(**batch).tolist())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--pairs", type=int, default=800)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=256)
    args = parser.parse_args()

    collection = open_collection("trec-dl-2019", split="test", first_stage="bm25-top100")
    pairs = [
        (collection.queries[q], collection.doc_text(d))
        for q, ranked in collection.run.items()
        for d, _ in ranked
    ]
    queries, docs = map(list, zip(*pairs[: args.pairs], strict=True))
    model = build_model(ModelConfig(num_layers=args.layers, max_length=args.max_length))

    timings = {}
    for name, fn in (
        ("input order", lambda: unsorted_scores(model, queries, docs, args.batch_size)),
        ("sorted by length", lambda: model.score(queries, docs, batch_size=args.batch_size)),
    ):
        fn()  # warm-up
        start = time.perf_counter()
        scores = fn()
        timings[name] = time.perf_counter() - start
        print(f"{name:>17}: {len(scores) / timings[name]:7.1f} pairs/s")
    print(f"speed-up of length-sorted batching: {timings['input order'] / timings['sorted by length']:.2f}x")


if __name__ == "__main__":
    main()
