"""The one home for loading Hugging Face models: what every family does the same way.

Each family (encoder, decoder, recurrent) picks its own Auto class and ``from_pretrained``
arguments; these helpers hold what they share, so a fix lands once:

- :func:`attn_kwargs`: ``model.attn_implementation`` as transformers' keyword (nothing when unset).
- :func:`set_layers`: ``model.num_layers`` applied to a transformers config (checked against the
  source's layer count), with per-layer lists (``layer_types``) cut to match.
- :func:`quiet_load_report`: hides transformers' table of dropped/missing layers while loading.
- :func:`check_weights_fit`: a checkpoint that does not fit its architecture raises.
- :func:`own_memory`: loaded tensors copied out of the safetensors buffer.
- :func:`check_fit`: the tokenizer and ``model.max_length`` fit the model's embeddings.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator

from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase
from transformers.integrations import is_deepspeed_zero3_enabled

from rerank_ray.config import ModelConfig

# Config fields holding one entry per layer (Qwen2's layer_types, hybrid models): they follow
# num_hidden_layers when the layer count changes.
PER_LAYER_FIELDS = ("layer_types",)


def attn_kwargs(cfg: ModelConfig) -> dict[str, str]:
    """``{"attn_implementation": ...}`` for ``from_pretrained``/``from_config``, or ``{}``."""
    return {} if cfg.attn_implementation is None else {"attn_implementation": cfg.attn_implementation}


def set_layers(cfg: ModelConfig, config: PretrainedConfig) -> None:
    """Keep the first ``model.num_layers`` layers (in place on `config`; None keeps them all).

    Raises ValueError when the source has fewer layers than asked for. Per-layer lists are cut
    to ``num_hidden_layers`` either way, since ``config_overrides`` may change it too."""
    if cfg.num_layers is not None:
        if cfg.num_layers > config.num_hidden_layers:
            raise ValueError(
                f"model.num_layers={cfg.num_layers} but {cfg.source} has only "
                f"{config.num_hidden_layers} layers; choose 1..{config.num_hidden_layers}"
            )
        config.num_hidden_layers = cfg.num_layers
    for key in PER_LAYER_FIELDS:
        layers = getattr(config, key, None)
        if isinstance(layers, list) and len(layers) != config.num_hidden_layers:
            setattr(config, key, layers[: config.num_hidden_layers])


@contextlib.contextmanager
def quiet_load_report() -> Iterator[None]:
    """Hide transformers' table of dropped/missing layers; callers check the loading info
    themselves (:func:`check_weights_fit`) and raise on anything unexpected. The level is raised
    on the "transformers" parent logger, not on transformers.modeling_utils: a level set on that
    child makes transformers 5 log a spurious "layers were not sharded" TP warning."""
    log = logging.getLogger("transformers")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def check_weights_fit(source: str, missing: list[str], mismatched: Iterable[tuple]) -> None:
    """Raise ValueError when `source`'s weights do not fit the model built from its config.

    `missing` are the missing keys the caller does not expect (a new head's keys are expected);
    `mismatched` is transformers' ``mismatched_keys`` (key, checkpoint shape, model shape). A
    checkpoint that does not fit its architecture (for example an override changed hidden_size)
    must not train silently."""
    shapes = sorted(f"{key} {tuple(ckpt)} -> {tuple(new)}" for key, ckpt, new in mismatched)
    if missing or shapes:
        raise ValueError(
            f"weights in {source} do not fit the model built from its config: "
            f"missing {missing[:8]}{' ...' if len(missing) > 8 else ''}, mismatched {shapes[:8]}; "
            "config_overrides that change shapes need model.init='random'"
        )


def own_memory(model: PreTrainedModel) -> PreTrainedModel:
    """Copy every loaded tensor into freshly allocated memory (not under ZeRO-3, where the
    parameters are partitioned placeholders that DeepSpeed owns).

    Tensors loaded from safetensors are views into the file buffer at an offset that is not
    64-byte aligned; CPU kernels take another path on unaligned memory and round differently in
    the last bit, so a reloaded model would not score bit-identically to the one saved.
    """
    if is_deepspeed_zero3_enabled():
        return model
    for tensor in (*model.parameters(), *model.buffers()):
        tensor.data = tensor.data.clone()
    return model


def check_fit(cfg: ModelConfig, config: PretrainedConfig, tokenizer: PreTrainedTokenizerBase) -> None:
    """Raise ValueError when the tokenizer has more tokens than the model's vocabulary, or
    ``model.max_length`` exceeds its position embeddings (models without any, like Mamba, pass)."""
    if len(tokenizer) > config.vocab_size:
        raise ValueError(
            f"tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {config.vocab_size}; "
            "set model.config_overrides.vocab_size or use the source's own tokenizer"
        )
    limit = getattr(config, "max_position_embeddings", None)
    if limit is not None and cfg.max_length > limit:
        raise ValueError(
            f"model.max_length={cfg.max_length} exceeds the model's max_position_embeddings={limit}; "
            "lower model.max_length"
        )
