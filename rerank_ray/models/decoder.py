"""Decoder family: a causal LM (Qwen2, Llama, Mistral, ...) as a pointwise reranker.

Input: ``model.template.format(query=q, document=d)`` tokenised with the tokenizer's own special
tokens (a BOS where the tokenizer adds one), then the EOS token (RankLLaMA, Ma et al. 2023).
When the text is longer than ``model.max_length`` the *document* loses tokens from its end; the
template's literal text, any ``{query}`` after the document, and the EOS always stay. The query
is shortened (from its end) only once the document is empty. A pair's tokens never depend on
its batch.

Score (raw, unnormalised, float32, higher = more relevant), read at each row's last real token
(found from the attention mask, so left and right padding give the same score):

- ``scoring: head``: ``AutoModel`` backbone, final hidden state -> ``Linear(hidden, 1)``.
- ``scoring: yes_logit``: ``AutoModelForCausalLM``; the LM logit of ``model.yes_token`` (a
  single token) at that position. No new weights.

Position ids are counted from each row's first real token, so a left-padded row sees the same
positions as a right-padded one.

Options: ``model.lora`` wraps the backbone with peft LoRA (the score head stays fully
trainable); ``model.gradient_checkpointing`` (non-reentrant); ``model.attn_implementation``
(``sdpa``, ``eager``, ``flash_attention_2``; flash needs the ``flash-attn`` package).

dtype: weights are built in float32. The caller picks the compute dtype: DeepSpeed's bf16 mode
casts the module itself (and under ZeRO-3 ``zero.Init`` partitions straight into bf16), and an
evaluator on a GPU calls ``reranker.to(device, torch.bfloat16)``. Scores are returned as float32.

Saved form (``save``): one plain Hugging Face model folder (``config.json``, safetensors,
tokenizer files) plus ``score_head.safetensors`` (head mode) and ``rerank_ray.json``. LoRA is
*merged* into the backbone weights on save (W + alpha/r * B @ A, peft's formula, applied to the
state dict so it also works on DeepSpeed's consolidated ZeRO-3 state dict). A reload therefore
needs neither peft nor the base model's source, and scores exactly as the trained model;
``cfg.lora`` stays in ``rerank_ray.json`` as the record of how it was trained, but is not
re-applied on reload.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    GgufConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

from rerank_ray.config import ModelConfig
from rerank_ray.models import hf
from rerank_ray.models.base import Reranker, apply_dropout, seeded_init
from rerank_ray.models.sources import resolve_gguf, resolve_source

HEAD_FILE = "score_head.safetensors"
# model_type values that belong to model.family='recurrent' (rerank_ray.models.recurrent).
RECURRENT_MODEL_TYPES = ("mamba", "mamba2")
_SLOT = re.compile(r"\{(query|document)\}")
# attn_implementation -> (module that must be importable, install hint)
_FLASH = {
    "flash_attention_2": ("flash_attn", "pip install flash-attn --no-build-isolation"),
    "flash_attention_3": ("flash_attn_interface", "build flash-attention's hopper/ (FA3) from source"),
}


class DecoderReranker(Reranker):
    family = "decoder"
    bf16_on_gpu = True

    def __init__(self, cfg: ModelConfig, *, saved: Path | None = None) -> None:
        """Build from `cfg`; with `saved`, load that folder's weights and tokenizer instead (used
        by :meth:`from_saved`: num_layers, overrides and LoRA are already baked into it)."""
        super().__init__(cfg)
        self._check_options(cfg)
        if saved is not None:
            config = AutoConfig.from_pretrained(str(saved))
            self.backbone = _load(self._auto_class(), str(saved), None, config, cfg)
            self.tokenizer = _saved_tokenizer(Path(saved))
        else:
            config = _config(cfg)
            self.backbone = self._build_backbone(cfg, config)
            self.tokenizer = _tokenizer(cfg.tokenizer or cfg.source)
        self._check_architecture()
        hf.check_fit(cfg, self.backbone.config, self.tokenizer)
        self.eos_id = _eos_id(self.tokenizer)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_id
        self.yes_id = _single_token(self.tokenizer, cfg.yes_token) if cfg.scoring == "yes_logit" else None
        self.score_head: torch.nn.Linear | None = None
        if cfg.scoring == "head":
            dtype = next(self.backbone.parameters()).dtype
            with seeded_init():
                self.score_head = torch.nn.Linear(self.backbone.config.hidden_size, 1, dtype=dtype)
            if saved is not None:
                self.score_head.load_state_dict(load_file(str(Path(saved) / HEAD_FILE)))
        if cfg.gradient_checkpointing:
            # transformers 5 renames this activation_checkpointing_enable (the old name warns);
            # switch once pyproject requires transformers>=5.
            self.backbone.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        # A saved model has its LoRA merged in (see the module docstring): never re-wrapped.
        self._has_lora = cfg.lora is not None and saved is None
        if self._has_lora:
            self.backbone = _wrap_lora(self.backbone, cfg)

    @classmethod
    def from_saved(cls, path: Path, cfg: ModelConfig) -> DecoderReranker:
        return cls(cfg, saved=Path(path))

    def _hf_model(self) -> PreTrainedModel:
        """The transformers model, inside the peft wrapper when there is one (peft injects the
        LoRA layers in place, so calling it directly runs them)."""
        return self.backbone.get_base_model() if self._has_lora else self.backbone

    # -- family hooks (RecurrentReranker overrides these) ---------------------------------------
    def _check_options(self, cfg: ModelConfig) -> None:
        name = cfg.attn_implementation
        if name in _FLASH and importlib.util.find_spec(_FLASH[name][0]) is None:
            raise ImportError(
                f"model.attn_implementation={name!r} needs the {_FLASH[name][0]!r} package, which is "
                f"not installed; fix: {_FLASH[name][1]}, or set model.attn_implementation=sdpa"
            )

    def _check_architecture(self) -> None:
        model_type = self.backbone.config.model_type
        if model_type in RECURRENT_MODEL_TYPES:
            raise ValueError(
                f"{self.cfg.source} is a {model_type!r} model: use model.family='recurrent' for it"
            )

    def _auto_class(self) -> Any:
        return AutoModel if self.cfg.scoring == "head" else AutoModelForCausalLM

    def _build_backbone(self, cfg: ModelConfig, config: PretrainedConfig) -> PreTrainedModel:
        kwargs = hf.attn_kwargs(cfg)
        if cfg.init == "random":
            with seeded_init():
                return self._auto_class().from_config(config, dtype=torch.float32, **kwargs)
        gguf = resolve_gguf(cfg.source)
        folder, gguf_file = gguf if gguf is not None else (resolve_source(cfg.source), None)
        return _load(self._auto_class(), folder, gguf_file, config, cfg, **kwargs)

    def _backbone_kwargs(self, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        # Positions start at each row's first real token: left padding then matches right padding.
        return {"position_ids": (attention_mask.long().cumsum(-1) - 1).clamp(min=0)}

    # -- Reranker interface --------------------------------------------------------------------
    def encode(self, queries: list[str], documents: list[str]) -> list[dict[str, list[int]]]:
        if len(queries) != len(documents):
            raise ValueError(f"tokenize() got {len(queries)} queries but {len(documents)} documents")
        rows = encode_pairs(
            self.tokenizer, self.cfg.template, queries, documents, self.cfg.max_length, self.eos_id
        )
        return [{"input_ids": row} for row in rows]

    def collate(self, encoded: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        """``input_ids`` and ``attention_mask``, ``[n_pairs, longest]``, padded on
        ``model.padding_side`` with the pad token (EOS when the tokenizer has none)."""
        rows = [e["input_ids"] for e in encoded]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            span = slice(width - len(row), width) if self.cfg.padding_side == "left" else slice(0, len(row))
            ids[i, span] = torch.tensor(row)
            mask[i, span] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def forward(self, **batch: torch.Tensor) -> torch.Tensor:
        """``Tensor[n_pairs]`` float32 raw scores from ``input_ids`` and ``attention_mask``."""
        input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
        model = self._hf_model()
        # AutoModel is its own base_model; a *ForCausalLM's base_model is its decoder stack.
        hidden = model.base_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            use_cache=False,
            **self._backbone_kwargs(attention_mask),
        ).last_hidden_state
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last_token_index(attention_mask)]
        if self.score_head is not None:
            return self.score_head(pooled).squeeze(-1).float()
        # Only the pooled rows go through the LM head: [n_pairs, vocab], not [n_pairs, seq, vocab].
        return model.get_output_embeddings()(pooled)[:, self.yes_id].float()

    def save_backbone(self, path: Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        state = self.state_dict() if state_dict is None else state_dict
        backbone = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
        if self.cfg.lora is not None and self._has_lora:
            backbone = merge_lora_state_dict(backbone, self.cfg.lora.alpha / self.cfg.lora.r)
        self._hf_model().save_pretrained(path, state_dict=backbone)
        self.tokenizer.save_pretrained(path)
        if self.score_head is not None:
            head = {
                k.removeprefix("score_head."): v.detach().cpu().contiguous()
                for k, v in state.items()
                if k.startswith("score_head.")
            }
            save_file(head, str(Path(path) / HEAD_FILE))


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """``LongTensor[n]``: the position of each row's last real token (mask == 1), for left,
    right or no padding alike."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask.long() * positions).argmax(dim=1)


def encode_pairs(
    tokenizer: PreTrainedTokenizerBase,
    template: str,
    queries: list[str],
    documents: list[str],
    max_length: int,
    eos_id: int,
) -> list[list[int]]:
    """Token ids of ``template`` filled with each pair, ending in `eos_id`, at most `max_length`.

    The full text is tokenised in one piece (so tokens are what the tokenizer would produce
    anyway); character offsets then tell which tokens came from the document. Over-long rows drop
    document tokens from the end, then query tokens; a token that crosses from the document into
    the template's text after it is never dropped, so the template's tail survives intact.
    """
    texts, spans = [], []
    for query, document in zip(queries, documents, strict=True):
        text, slot_spans = _fill(template, {"query": query, "document": document})
        texts.append(text)
        spans.append(slot_spans)
    enc = tokenizer(
        texts, add_special_tokens=True, return_offsets_mapping=True, return_special_tokens_mask=True
    )
    rows = []
    for ids, offsets, special, slot_spans in zip(
        enc["input_ids"], enc["offset_mapping"], enc["special_tokens_mask"], spans, strict=True
    ):
        ids = list(ids)
        has_eos = ids[-1] == eos_id and special[-1] == 1
        excess = len(ids) + (0 if has_eos else 1) - max_length
        drop: set[int] = set()
        for start, end in (slot_spans["document"], slot_spans["query"]):
            if excess <= 0:
                break
            inside = [
                i
                for i, ((s, e), sp) in enumerate(zip(offsets, special, strict=True))
                if not sp and s < end and e > start and e <= end
            ]
            cut = inside[len(inside) - min(excess, len(inside)) :]
            drop.update(cut)
            excess -= len(cut)
        if excess > 0:
            raise ValueError(
                f"model.template without query and document is {excess} tokens longer than "
                f"model.max_length={max_length}; shorten the template or raise max_length"
            )
        kept = [t for i, t in enumerate(ids) if i not in drop]
        rows.append(kept if has_eos else [*kept, eos_id])
    return rows


def merge_lora_state_dict(state: dict[str, torch.Tensor], scaling: float) -> dict[str, torch.Tensor]:
    """A peft-LoRA model's state dict -> the plain model's, with ``W + scaling * B @ A`` folded
    into each adapted ``Linear`` (peft's merge for the default, non-rslora LoRA; computed in
    float32, stored in W's dtype). Keys lose peft's ``base_model.model.`` and ``.base_layer``."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if ".lora_A." in key or ".lora_B." in key:
            continue
        name = key.removeprefix("base_model.model.")
        if ".base_layer." in key:
            module = key.split(".base_layer.")[0]
            name = name.replace(".base_layer.", ".")
            if key.endswith(".base_layer.weight"):
                a = state[f"{module}.lora_A.default.weight"].float()
                b = state[f"{module}.lora_B.default.weight"].float()
                value = (value.float() + scaling * (b @ a)).to(value.dtype)
        out[name] = value
    return out


# -- building blocks -----------------------------------------------------------------------------


def _fill(template: str, values: dict[str, str]) -> tuple[str, dict[str, tuple[int, int]]]:
    """``template.format(**values)`` plus the character span each slot's value occupies."""
    parts, spans, pos = [], {}, 0
    for piece_index, piece in enumerate(_SLOT.split(template)):
        # re.split with one group alternates literal, slot name, literal, ...
        text = values[piece] if piece_index % 2 else piece.replace("{{", "{").replace("}}", "}")
        if piece_index % 2:
            spans[piece] = (pos, pos + len(text))
        parts.append(text)
        pos += len(text)
    return "".join(parts), spans


def _config(cfg: ModelConfig) -> PretrainedConfig:
    gguf = resolve_gguf(cfg.source)
    if gguf is not None:
        config = AutoConfig.from_pretrained(gguf[0], gguf_file=gguf[1])
    else:
        config = AutoConfig.from_pretrained(resolve_source(cfg.source))
    for key, value in cfg.config_overrides.items():
        if not hasattr(config, key):
            raise ValueError(f"model.config_overrides.{key}: {type(config).__name__} has no such field")
        setattr(config, key, value)
    hf.set_layers(cfg, config)
    config.use_cache = False
    apply_dropout(config, cfg)
    return config


def _tokenizer(source: str) -> PreTrainedTokenizerBase:
    gguf = resolve_gguf(source)
    if gguf is not None:
        return AutoTokenizer.from_pretrained(gguf[0], gguf_file=gguf[1])
    return AutoTokenizer.from_pretrained(resolve_source(source))


def _saved_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    # transformers 5's AutoTokenizer prefers the class mapped from config.json's model_type over
    # tokenizer_config.json's tokenizer_class, and v5 tokenizer classes rebuild their own
    # normaliser and pre-tokenizer: a model saved with another family's tokenizer (tiny test
    # models) would reload tokenising differently. Load the class that was saved.
    name = json.loads((path / "tokenizer_config.json").read_text()).get("tokenizer_class")
    tokenizer_class = tokenizer_class_from_name(name) if name else None
    return (tokenizer_class or AutoTokenizer).from_pretrained(str(path))


def _load(
    auto: Any, folder: str, gguf_file: str | None, config: PretrainedConfig, cfg: ModelConfig, **kwargs: Any
) -> PreTrainedModel:
    # GGUF weights are dequantised to float32 at load: trainable, and saved as plain safetensors.
    # With dequantize=True transformers also drops its GGUF quantizer after loading; without it,
    # the weights stay packed when the `kernels` package is installed, and even dequantised ones
    # keep a quantizer that refuses save_pretrained ("quantized with gguf and is not serializable").
    gguf = (
        {}
        if gguf_file is None
        else {"gguf_file": gguf_file, "quantization_config": GgufConfig(dequantize=True)}
    )
    with hf.quiet_load_report():
        model, info = auto.from_pretrained(
            folder, config=config, dtype=torch.float32, output_loading_info=True, **gguf, **kwargs
        )
    # A checkpoint that does not fit its architecture must not train silently. Dropped layers
    # (num_layers) and an unused LM head (AutoModel) show up as unexpected keys: those are fine.
    missing = sorted(info["missing_keys"] - model.all_tied_weights_keys.keys())
    hf.check_weights_fit(folder, missing, info["mismatched_keys"])
    return hf.own_memory(model)


def _eos_id(tokenizer: PreTrainedTokenizerBase) -> int:
    # BERT-style tokenizers (used for tiny test models) have [SEP] where decoders have EOS.
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if eos is None:
        raise ValueError(
            f"tokenizer {tokenizer.name_or_path} has neither an EOS nor a SEP token; the decoder "
            "template ends with one. Use a tokenizer that defines eos_token"
        )
    return int(eos)


def _single_token(tokenizer: PreTrainedTokenizerBase, text: str) -> int:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(
            f"model.yes_token={text!r} is {len(ids)} tokens for this tokenizer "
            f"({tokenizer.convert_ids_to_tokens(ids)}); scoring='yes_logit' needs exactly one. "
            "Try ' yes', 'yes' or ' Yes'"
        )
    return int(ids[0])


def _wrap_lora(model: PreTrainedModel, cfg: ModelConfig) -> torch.nn.Module:
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ImportError("model.lora needs peft; fix: pip install -e '.[llm]'") from None
    assert cfg.lora is not None
    linear = sorted(
        {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    )
    absent = [t for t in cfg.lora.target_modules if t not in linear]
    if absent:
        raise ValueError(
            f"model.lora.target_modules {absent} are not Linear layers of {type(model).__name__}; "
            f"its Linear layers are named {linear}"
        )
    lora = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=list(cfg.lora.target_modules),
    )
    with seeded_init():
        return get_peft_model(model, lora)
