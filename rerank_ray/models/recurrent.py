"""Recurrent family: a state-space LM (Mamba, Mamba-2) as a pointwise reranker.

Everything a :class:`~rerank_ray.models.decoder.DecoderReranker` does, with the same template,
truncation, EOS, scoring modes (``head`` / ``yes_logit``), LoRA, save and reload; only the
backbone differs: transformers' ``MambaModel`` / ``Mamba2Model`` (``AutoModel``) or their
``*ForCausalLM`` (``AutoModelForCausalLM``), chosen by the source's config.

Pooling: the hidden state at each row's last real token, gathered with the attention mask.
The model is causal, so with right padding (the default) the pooled state never sees a pad
token, on every kernel path. Left padding is also exact on the pure-torch path (transformers
zeroes pad positions before the convolution and before the scan, so the state entering the first
real token is zero); the fused CUDA training kernel (``mamba_inner_fn``, used when
``mamba-ssm`` is installed) skips the second zeroing, so keep ``padding_side: right`` on GPUs.

No attention: ``model.attn_implementation`` must stay unset, and there are no position ids.
LoRA's ``target_modules`` must name Mamba's layers, not the attention default: ``in_proj``,
``x_proj``, ``dt_proj`` (Mamba-2: ``in_proj``). peft refuses ``out_proj`` and ``conv1d`` on
Mamba models, because the fused CUDA kernel reads their weights directly.
"""

from __future__ import annotations

import torch

from rerank_ray.config import ModelConfig
from rerank_ray.models.decoder import RECURRENT_MODEL_TYPES, DecoderReranker


class RecurrentReranker(DecoderReranker):
    family = "recurrent"

    def _check_options(self, cfg: ModelConfig) -> None:
        if cfg.attn_implementation is not None:
            raise ValueError(
                f"model.attn_implementation={cfg.attn_implementation!r} does not apply to "
                "model.family='recurrent' (Mamba has no attention); remove it"
            )

    def _backbone_kwargs(self, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        return {}

    def _check_architecture(self) -> None:
        model_type = self.backbone.config.model_type
        if model_type not in RECURRENT_MODEL_TYPES:
            raise ValueError(
                f"model.family='recurrent' expects a {' or '.join(RECURRENT_MODEL_TYPES)} model, but "
                f"{self.cfg.source} is {model_type!r}; use model.family='decoder' for it"
            )
