"""``model.autocast: bf16`` against float32 on the CPU, side by side in one process: the 6-layer
MiniLM cross-encoder (fresh head, max length 128) scoring trec-dl-2019's depth-30 BM25 pairs
(``Reranker.score``, batches of 64), and training steps on the same pairs (groups of 4,
2 groups a step, AdamW, dropout on), torch on 2 threads. Prints pairs/s for each precision,
their ratio, and how far bf16 moves the scores (largest |difference| against the scores'
standard deviation, and the fraction of queries whose top-10 order changes).

    python bench/cpu_bf16.py [--depth 30] [--train-steps 12] [--model SAVED_RERANKER]

With ``--model`` (a folder written by ``rerank-ray train``), scoring uses that trained reranker
and the nDCG@10 of both precisions' dl19 rankings is printed too.

bf16 pays off only on a CPU with native bf16 instructions (avx512_bf16 or AMX); the flags are
printed. Measured on 2026-12-02 (AMD EPYC, avx512_bf16, 2 cores): see docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from teacher_throughput import dl19_pairs  # noqa: E402

from rerank_ray.config import ModelConfig  # noqa: E402
from rerank_ray.models import build_model, load_reranker  # noqa: E402


def cpu_bf16_flags() -> list[str]:
    flags = Path("/proc/cpuinfo").read_text().split("flags", 2)[1].split("\n")[0].split()
    return sorted(f for f in flags if "bf16" in f or f.startswith("amx"))


def time_scoring(model, queries, docs, setting: str, batch: int) -> tuple[float, list[float]]:
    model.cfg = model.cfg.model_copy(update={"autocast": setting})
    model.score(queries[:batch], docs[:batch], batch)  # warm-up
    start = time.perf_counter()
    scores = model.score(queries, docs, batch)
    return time.perf_counter() - start, scores


def time_training(queries, docs, setting: str, steps: int) -> float:
    """Training pairs/s of the 6-layer MiniLM under `setting` (``size_throughput.train_rate``:
    groups of 4, 2 a step, AdamW, step 0 a warm-up)."""
    from size_throughput import train_rate

    cfg = ModelConfig(num_layers=6, max_length=128, autocast=setting)
    return train_rate(cfg, pd.DataFrame({"query": queries, "doc": docs}), steps, lr=3e-5)


def ndcg(pairs) -> dict[str, float]:
    """nDCG@10 of the dl19 rankings by each precision's scores (candidates below the depth
    keep BM25's order, as in evaluation)."""
    from rerank_ray.data.datasets import open_collection
    from rerank_ray.evaluation.metrics import evaluate_run
    from rerank_ray.evaluation.rerank import ranked, with_first_stage_tail

    collection = open_collection("trec-dl-2019", split="test", first_stage="bm25-top100")
    keys = list(zip(pairs["query_id"], pairs["doc_id"], strict=True))
    out = {}
    for column in ("fp32", "bf16"):
        run = with_first_stage_tail(ranked(keys, pairs[column].tolist()), collection)
        out[column] = evaluate_run(collection.qrels, run, ["nDCG@10"])[0]["nDCG@10"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, default=30)
    parser.add_argument("--train-steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--model", help="a saved reranker to score with (default: a fresh head)")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    pairs = dl19_pairs(args.depth)
    queries, docs = pairs["query"].tolist(), pairs["doc"].tolist()
    print(f"CPU bf16 flags: {cpu_bf16_flags() or 'none'}; {len(pairs)} dl19 pairs, 2 threads")

    torch.manual_seed(0)
    if args.model:
        model = load_reranker(args.model, inference=True)
    else:
        model = build_model(ModelConfig(num_layers=6, max_length=128)).eval()
    seconds, scores = {}, {}
    for setting in ("off", "bf16", "off", "bf16"):  # interleaved, best of two
        s, scores[setting] = time_scoring(model, queries, docs, setting, args.batch_size)
        seconds[setting] = min(seconds.get(setting, s), s)
    score_rate = {k: len(pairs) / v for k, v in seconds.items()}
    diff = np.abs(np.array(scores["bf16"]) - np.array(scores["off"]))
    pairs = pairs.assign(fp32=scores["off"], bf16=scores["bf16"])
    changed = np.mean(
        [
            list(g.nlargest(10, "fp32")["doc_id"]) != list(g.nlargest(10, "bf16")["doc_id"])
            for _, g in pairs.groupby("query_id")
        ]
    )
    train_rate = {s: time_training(queries, docs, s, args.train_steps) for s in ("off", "bf16")}

    print(f"{'stage':<10} {'float32 pairs/s':>16} {'bf16 pairs/s':>13} {'ratio':>6}")
    for stage, rate in (("scoring", score_rate), ("training", train_rate)):
        print(f"{stage:<10} {rate['off']:>16.1f} {rate['bf16']:>13.1f} {rate['bf16'] / rate['off']:>6.2f}")
    print(
        f"scores: max |bf16 - fp32| {diff.max():.4f} (score std {np.std(scores['off']):.4f}); "
        f"top-10 order changed on {changed:.0%} of queries"
        + ("" if args.model else " (a fresh head: near-tied scores)")
    )
    if args.model:
        print("dl19 nDCG@10 at depth", args.depth, {k: round(v, 4) for k, v in ndcg(pairs).items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
