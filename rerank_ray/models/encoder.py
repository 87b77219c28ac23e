"""Encoder family: a BERT-style cross-encoder with a one-logit head.

Input: the tokenizer's own pair encoding ``[CLS] query [SEP] document [SEP]`` (``model.template``
is not used by this family), truncated to ``model.max_length`` by cutting the document
(``only_second``). A query that alone leaves no room for a document token is the exception:
that pair is truncated ``longest_first``, per pair, so a score never depends on its batch.

Score: ``AutoModelForSequenceClassification`` with ``num_labels=1``; the raw logit
(float32, unnormalised, higher = more relevant).

Size axis: ``model.num_layers = N`` keeps the first N transformer layers of the pretrained
backbone (weights identical to the original's first N layers; the rest are dropped).
``model.init = "random"`` builds the (possibly ``config_overrides``-shrunk) architecture with a
fixed seed and no pretrained weights, still with the real tokenizer: tests and tiny models.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
)

from rerank_ray.config import ModelConfig
from rerank_ray.models import hf
from rerank_ray.models.base import Reranker, apply_dropout, seeded_init
from rerank_ray.models.sources import resolve_source


class EncoderReranker(Reranker):
    family = "encoder"

    def __init__(self, cfg: ModelConfig, *, saved: Path | None = None) -> None:
        """Build from `cfg`; with `saved`, load that folder's weights and tokenizer instead
        (used by :meth:`from_saved`: the folder already has num_layers and overrides applied)."""
        super().__init__(cfg)
        if cfg.lora is not None:
            raise ValueError("model.lora is not supported for model.family='encoder'; remove model.lora")
        if saved is not None:
            self.model = _load_head_model(str(saved), cfg, config=None, expect_missing=())
            self.tokenizer = AutoTokenizer.from_pretrained(str(saved))
        else:
            source = resolve_source(cfg.source)
            self.model = _build_model(cfg, source)
            self.tokenizer = AutoTokenizer.from_pretrained(resolve_source(cfg.tokenizer or cfg.source))
        self.tokenizer.padding_side = cfg.padding_side
        hf.check_fit(cfg, self.model.config, self.tokenizer)
        if cfg.gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
        self._pair_specials = self.tokenizer.num_special_tokens_to_add(pair=True)

    @classmethod
    def from_saved(cls, path: Path, cfg: ModelConfig) -> EncoderReranker:
        return cls(cfg, saved=Path(path))

    def _long_queries(self, queries: list[str], documents: list[str]) -> list[bool]:
        """Which queries alone leave no room for a document token (truncated longest_first)."""
        if len(queries) != len(documents):
            raise ValueError(f"tokenize() got {len(queries)} queries but {len(documents)} documents")
        lengths = [len(ids) for ids in self.tokenizer(queries, add_special_tokens=False)["input_ids"]]
        return [n + self._pair_specials >= self.cfg.max_length for n in lengths]

    def encode(self, queries: list[str], documents: list[str]) -> list[dict[str, list[int]]]:
        too_long = self._long_queries(queries, documents)
        if not any(too_long):
            enc = self.tokenizer(queries, documents, truncation="only_second", max_length=self.cfg.max_length)
            return [dict(zip(enc.keys(), row, strict=True)) for row in zip(*enc.values(), strict=True)]
        # Mixed batch: encode each pair with its own strategy.
        return [
            dict(
                self.tokenizer(
                    query,
                    document,
                    truncation="longest_first" if long_query else "only_second",
                    max_length=self.cfg.max_length,
                )
            )
            for query, document, long_query in zip(queries, documents, too_long, strict=True)
        ]

    def collate(self, encoded: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        return dict(self.tokenizer.pad(encoded, padding=True, return_tensors="pt"))

    def tokenize(self, queries: list[str], documents: list[str]) -> dict[str, torch.Tensor]:
        if any(self._long_queries(queries, documents)):
            return self.collate(self.encode(queries, documents))
        # The common case in one tokenizer call (the training step's path): same tensors.
        return dict(
            self.tokenizer(
                queries,
                documents,
                truncation="only_second",
                max_length=self.cfg.max_length,
                padding=True,
                return_tensors="pt",
            )
        )

    def forward(self, **batch: torch.Tensor) -> torch.Tensor:
        """``Tensor[n_pairs]`` float32 raw logits."""
        return self.model(**batch).logits.squeeze(-1).float()

    def save_backbone(self, path: Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        if state_dict is not None:
            # Keys come as this module's state_dict() (e.g. ZeRO-3's consolidated weights):
            # strip the "model." prefix to get the backbone's own keys.
            state_dict = {k.removeprefix("model."): v for k, v in state_dict.items()}
        self.model.save_pretrained(path, state_dict=state_dict)
        self.tokenizer.save_pretrained(path)


def _build_model(cfg: ModelConfig, source: str) -> PreTrainedModel:
    config = AutoConfig.from_pretrained(source, **cfg.config_overrides)
    hf.set_layers(cfg, config)
    config.num_labels = 1
    apply_dropout(config, cfg)
    if cfg.init == "random":
        with seeded_init():
            return AutoModelForSequenceClassification.from_config(config, **hf.attn_kwargs(cfg))
    # Only the new head may be missing; anything else means the checkpoint does not fit the
    # architecture (for example an override changed hidden_size) and must not train silently.
    # A BERT without a pooler (paraphrase-MiniLM-L3-v2, converted from ONNX) gets a fresh one:
    # BertForSequenceClassification's head reads the pooled [CLS], so it is part of the head.
    return _load_head_model(
        source, cfg, config=config, expect_missing=("classifier.", "score.", "bert.pooler.")
    )


def _load_head_model(
    source: str, cfg: ModelConfig, *, config: PretrainedConfig | None, expect_missing: tuple[str, ...]
) -> PreTrainedModel:
    kwargs = hf.attn_kwargs(cfg) | ({} if config is None else {"config": config})
    with seeded_init(), hf.quiet_load_report():
        # ignore_mismatched_sizes: report mismatches below, in our words, instead of transformers
        # raising "look at the above report" about a report that quiet_load_report hid.
        model, info = AutoModelForSequenceClassification.from_pretrained(
            source, output_loading_info=True, ignore_mismatched_sizes=True, **kwargs
        )
    missing = sorted(k for k in info["missing_keys"] if not k.startswith(expect_missing))
    hf.check_weights_fit(source, missing, info["mismatched_keys"])
    if info["unexpected_keys"] and config is None:
        raise ValueError(
            f"saved model {source} has unexpected weights: {sorted(info['unexpected_keys'])[:8]}"
        )
    return hf.own_memory(model)
