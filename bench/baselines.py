"""Plain PyTorch loops that the project's stages are measured against (bench/ratios.py).

Each is what a careful engineer would write without the project: no Ray, no DeepSpeed; torch's
threads set to the cores given; inference under ``torch.inference_mode``; pairs tokenised once,
sorted by token length over the whole input, and cut into dynamically padded batches.

- :func:`plain_train`: AdamW on the same model, groups, batch, tokenizer call and loss, in
  training mode (dropout on) as in the project's loop.
- :func:`plain_score`: scores (query, document) pairs with a cross-encoder.
- :func:`st_predict`: sentence-transformers' ``CrossEncoder.predict`` on a saved model folder
  (the ``bench`` extra: ``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Timing:
    pairs: int
    seconds: float

    @property
    def pairs_per_s(self) -> float:
        return self.pairs / self.seconds


def plain_train(
    model: torch.nn.Module,
    tokenize: Callable[[list[str], list[str]], dict[str, torch.Tensor]],
    batches: Sequence[tuple[list[str], list[list[str]]]],
    loss_fn: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
    *,
    learning_rate: float,
    weight_decay: float,
    max_grad_norm: float,
    threads: int,
    warmup: int,
) -> Timing:
    """Train on `batches` (``(queries, docs per query)``, positive first) one optimizer step
    each; time the steps after the first `warmup`. The model is put in training mode first
    (dropout on), as the project's loop does before every step (``train.loop.train_step``), so
    P1 times the same forward and backward on both sides."""
    torch.set_num_threads(threads)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "norm" not in n.lower()]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "norm" in n.lower()]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=learning_rate,
    )
    pairs, start = 0, time.perf_counter()
    for step, (queries, groups) in enumerate(batches):
        if step == warmup:
            pairs, start = 0, time.perf_counter()
        group_size = len(groups[0])
        flat_queries = [q for q in queries for _ in range(group_size)]
        flat_docs = [d for group in groups for d in group]
        scores = model(**tokenize(flat_queries, flat_docs)).float().view(len(queries), group_size)
        loss = loss_fn(scores, None)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        pairs += len(flat_docs)
    return Timing(pairs, time.perf_counter() - start)


def plain_score(
    model: torch.nn.Module,
    tokenizer,
    queries: list[str],
    docs: list[str],
    *,
    max_length: int,
    batch_size: int,
    threads: int,
) -> tuple[list[float], Timing]:
    """Cross-encoder logits for every pair (input order), with the time to compute them."""
    torch.set_num_threads(threads)
    model.eval()
    start = time.perf_counter()
    encoded = tokenizer(queries, docs, truncation="only_second", max_length=max_length)
    features = [{k: encoded[k][i] for k in encoded} for i in range(len(queries))]
    order = sorted(range(len(features)), key=lambda i: -len(features[i]["input_ids"]))
    scores = [0.0] * len(queries)
    with torch.inference_mode():
        for begin in range(0, len(order), batch_size):
            idx = order[begin : begin + batch_size]
            batch = tokenizer.pad([features[i] for i in idx], padding=True, return_tensors="pt")
            logits = model(**batch).logits.squeeze(-1).float().tolist()
            for i, s in zip(idx, logits, strict=True):
                scores[i] = s
    return scores, Timing(len(queries), time.perf_counter() - start)


def st_predict(
    model_dir: str, queries: list[str], docs: list[str], *, max_length: int, batch_size: int, threads: int
) -> tuple[list[float], Timing]:
    """sentence-transformers ``CrossEncoder.predict`` (it sorts by length itself); the time
    includes loading the model, as the project's evaluate does."""
    try:
        from sentence_transformers import CrossEncoder
    except ImportError as err:
        raise SystemExit(f"{err}; install the bench extra: pip install -e '.[bench]'") from err

    torch.set_num_threads(threads)
    start = time.perf_counter()
    model = CrossEncoder(model_dir, max_length=max_length, device="cpu", num_labels=1)
    scores = model.predict(
        list(zip(queries, docs, strict=True)),
        batch_size=batch_size,
        show_progress_bar=False,
        activation_fn=torch.nn.Identity(),
        convert_to_numpy=True,
    )
    return [float(s) for s in scores], Timing(len(queries), time.perf_counter() - start)
