"""The bi-encoder family: a zero-shot sentence-embedding model as a reranker.

``score(q, d) = scale * cos(mean_pool(q), mean_pool(d))`` (sentence-transformers' pooling for
all-MiniLM-L6-v2 and all-mpnet-base-v2: the mean over non-padding tokens, L2-normalised). It
scores like a cross-encoder (:meth:`BiEncoder.score`: lists of queries and documents in, one
float per pair out), so the teacher scoring job and evaluation use it through the same call
(``teacher/config.py``: ``TeacherModel.load``). It is not trained here.

Each distinct document is encoded once per ``score`` call and each distinct query once per
model (cached: a query recurs in many of the scoring job's blocks, a document rarely, and
documents would not fit in memory at scale). Texts are cut into forward passes sorted by their
token count (after truncation): the least padding a batch size allows (``bench/bi_encoder_batching.py``).
"""

from __future__ import annotations

from typing import Any

import torch


class BiEncoder:
    """A sentence-embedding model that scores (query, document) pairs by scaled cosine."""

    def __init__(
        self,
        source: str,
        *,
        max_length: int,
        query_max_length: int,
        scale: float,
        autocast: str,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        from transformers import AutoModel, AutoTokenizer

        from rerank_ray.models.sources import resolve_source

        folder = resolve_source(source)
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder).to(device, dtype).eval()
        self.device, self.autocast = device, autocast
        self.max_length, self.query_max_length, self.scale = max_length, query_max_length, scale
        self._query_cache: dict[str, Any] = {}

    def score(self, queries: list[str], docs: list[str], batch_size: int) -> list[float]:
        """``scale * cos`` per pair, in input order; matmuls in bf16 under autocast as
        ``autocast`` says (``rerank_ray.models.precision``; auto = on CUDA only)."""
        from rerank_ray.models.precision import scoring_autocast

        with torch.inference_mode(), scoring_autocast(self.autocast, self.device):
            new = [q for q in dict.fromkeys(queries) if q not in self._query_cache]
            if new:
                embedded = self.embed(new, self.query_max_length, batch_size)
                self._query_cache.update(zip(new, embedded, strict=True))
            unique_docs = list(dict.fromkeys(docs))
            d_emb = self.embed(unique_docs, self.max_length, batch_size)
            d_index = {d: i for i, d in enumerate(unique_docs)}
            q_rows = torch.stack([self._query_cache[q] for q in queries])
            d_rows = d_emb[[d_index[d] for d in docs]]
            return ((q_rows * d_rows).sum(-1) * self.scale).tolist()

    def embed(self, texts: list[str], max_length: int, batch_size: int) -> torch.Tensor:
        """L2-normalised mean-pooled embeddings ``[len(texts), hidden]``, in input order; batches
        are cut from the texts sorted by token count, longest first, ties in input order (less
        padding than sorting by characters: ``bench/bi_encoder_batching.py``)."""
        lengths = [
            len(ids) for ids in self.tokenizer(texts, max_length=max_length, truncation=True)["input_ids"]
        ]
        order = sorted(range(len(texts)), key=lambda i: -lengths[i])
        out = torch.empty(0)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            enc = self.tokenizer(
                [texts[i] for i in idx],
                max_length=max_length,
                truncation=True,
                padding=True,
                return_tensors="pt",
            ).to(self.device)
            hidden = self.model(**enc).last_hidden_state.float()
            mask = enc["attention_mask"].unsqueeze(-1).float()
            pooled = torch.nn.functional.normalize(
                (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9), dim=-1
            )
            if not out.numel():
                out = torch.empty(len(texts), pooled.shape[-1], device=pooled.device)
            out[idx] = pooled
        return out
