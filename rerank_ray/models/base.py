"""The one interface every reranker family implements.

A :class:`Reranker` is a ``torch.nn.Module`` that maps tokenized (query, document) pairs to one
raw relevance score per pair (an unnormalised logit, higher = more relevant). Losses see these
scores, never the model, so one training loop serves every family.

Contract:

- ``tokenize(queries, documents)`` -> a dict of tensors (``input_ids``, ``attention_mask``, ...),
  one row per pair, truncated to ``model.max_length``; the family applies its own template.
- ``forward(**batch)`` -> ``Tensor[n_pairs]`` of float scores.
- ``save(path)`` writes Hugging Face format (``config.json``, weights, tokenizer files) plus
  ``rerank_ray.json`` holding the :class:`~rerank_ray.config.ModelConfig` that built it, so a
  reload (``load_reranker``) scores with exactly the template, length and pooling used in training.
- ``score(queries, documents, batch_size)`` scores many pairs without gradients, batching by
  length to waste little padding; it returns a list of floats in input order.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import PretrainedConfig

from rerank_ray.config import ModelConfig
from rerank_ray.io import atomic_dir, write_json
from rerank_ray.models.precision import scoring_autocast

META_FILE = "rerank_ray.json"
# Seed of every random initialisation (heads, init="random" backbones, LoRA adapters), so a
# model built from the same config is the same model on every worker and in every test.
INIT_SEED = 0
# Transformers config fields that hold a dropout probability: BERT-like encoders
# (hidden_/attention_probs_dropout_prob, classifier_dropout), Llama/Qwen2/Mistral
# (attention_dropout), GPT-2-like (resid/embd/attn_pdrop).
DROPOUT_FIELDS = (
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "classifier_dropout",
    "attention_dropout",
    "hidden_dropout",
    "resid_pdrop",
    "embd_pdrop",
    "attn_pdrop",
)


def apply_dropout(config: PretrainedConfig, cfg: ModelConfig) -> None:
    """Set every dropout field of the backbone's `config` to ``model.dropout`` (None: keep them).

    Raises when the architecture has no dropout setting (Mamba), rather than ignoring the value."""
    if cfg.dropout is None:
        return
    fields = [name for name in DROPOUT_FIELDS if name in config.to_dict()]
    if not fields:
        raise ValueError(
            f"model.dropout={cfg.dropout}: {type(config).__name__} ({cfg.source}) has no dropout "
            f"setting (none of {', '.join(DROPOUT_FIELDS)}); remove model.dropout"
        )
    for name in fields:
        setattr(config, name, cfg.dropout)


@contextlib.contextmanager
def seeded_init() -> Iterator[None]:
    """Fixed-seed initialisation that leaves the caller's RNG state untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(INIT_SEED)
        yield


class Reranker(torch.nn.Module):
    """Base class: subclasses set ``self.tokenizer`` and implement tokenize/forward/save_backbone."""

    family: str = ""
    # Evaluation with model.dtype=auto scores in bfloat16 on a GPU (large LMs); else float32.
    bf16_on_gpu: bool = False

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg

    # -- to implement -------------------------------------------------------------------------
    def encode(self, queries: list[str], documents: list[str]) -> list[dict[str, list[int]]]:
        """Each pair's model inputs (``input_ids`` first), truncated, not padded."""
        raise NotImplementedError

    def collate(self, encoded: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        """Pairs from :meth:`encode` padded into one batch of tensors."""
        raise NotImplementedError

    def tokenize(self, queries: list[str], documents: list[str]) -> dict[str, torch.Tensor]:
        """One batch of pairs: ``collate(encode(...))`` (a family may take a faster path to
        the same tensors)."""
        return self.collate(self.encode(queries, documents))

    def forward(self, **batch: torch.Tensor) -> torch.Tensor:  # noqa: D401
        raise NotImplementedError

    def save_backbone(self, path: Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """Write the HF weights (+ tokenizer) into `path`; `state_dict` overrides the module's
        own (used for ZeRO-3 consolidated weights)."""
        raise NotImplementedError

    @classmethod
    def from_saved(cls, path: Path, cfg: ModelConfig) -> Reranker:
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------------
    def save(self, path: str | Path, state_dict: dict[str, torch.Tensor] | None = None) -> Path:
        """Write the model to the folder `path` (replacing one there) so that a folder under that
        name is always complete: the files go to a hidden temporary folder beside it, which is
        renamed to `path` once all are written (``rerank_ray.io.atomic_dir``). A failed save
        (e.g. ``DiskFull``) leaves `path` as it was."""
        path = Path(path)
        state = self.state_dict() if state_dict is None else state_dict
        tensors = {
            t.data_ptr(): t.numel() * t.element_size() for t in state.values() if isinstance(t, torch.Tensor)
        }
        with atomic_dir(path, needed=sum(tensors.values()) or None) as tmp:  # weights: most of the folder
            self.save_backbone(tmp, state_dict)
            meta: dict[str, Any] = {"family": self.family, "model": self.cfg.model_dump(mode="json")}
            write_json(tmp / META_FILE, meta)
        return path

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @torch.no_grad()
    def score(self, queries: list[str], documents: list[str], batch_size: int = 64) -> list[float]:
        """Scores for many pairs, in input order. The pairs are tokenised once, then cut into
        batches by token count after truncation, longest first, ties in input order: the least
        padding a batch size allows (characters are a rougher proxy: ``bench/bi_encoder_batching.py``,
        docs/BENCHMARKS.md). Matmuls run
        in bf16 when ``model.autocast`` says so (``rerank_ray.models.precision``)."""
        if len(queries) != len(documents):
            raise ValueError(f"score() got {len(queries)} queries but {len(documents)} documents")
        was_training = self.training
        self.eval()
        encoded = self.encode(queries, documents)
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]["input_ids"]))
        out = [0.0] * len(queries)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = self.collate([encoded[i] for i in idx])
            batch = {k: v.to(self.device) for k, v in batch.items()}
            with scoring_autocast(self.cfg.autocast, self.device):
                scores = self(**batch).float().cpu().tolist()
            for i, s in zip(idx, scores, strict=True):
                out[i] = s
        self.train(was_training)
        return out
