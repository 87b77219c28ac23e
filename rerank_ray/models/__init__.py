"""Reranker families and the one registry that names them.

``MODELS`` maps ``model.family`` (the ``ModelFamily`` literal in rerank_ray.config) to a
:class:`~rerank_ray.models.base.Reranker` subclass. Each class is built as ``cls(cfg)`` and
reloaded as ``cls.from_saved(path, cfg)``; facts about a family (``bf16_on_gpu``) are class
attributes, read from here rather than repeated as lists of family names.

Adding a family touches:

- ``rerank_ray/models/<family>.py``: the ``Reranker`` subclass (``family``, ``encode``, ``collate``,
  ``forward``, ``save_backbone``, ``from_saved``); load weights with the helpers in
  ``rerank_ray/models/hf.py`` (layer count, fit checks, own-memory copy, attention kwargs);
- this file: one line in ``MODELS``;
- ``rerank_ray/config.py``: the name in ``ModelFamily`` (tests/unit/test_registries.py checks
  it equals ``MODELS``), and in ``ModelConfig._check`` if the family ignores ``model.template``
  like the encoder;
- ``tests/unit/test_<family>.py``: a tiny random-init model built from a config (build, score,
  save -> load gives identical scores).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from rerank_ray.config import ModelConfig
from rerank_ray.config_loading import validate
from rerank_ray.models.base import META_FILE, Reranker
from rerank_ray.models.decoder import DecoderReranker
from rerank_ray.models.encoder import EncoderReranker
from rerank_ray.models.recurrent import RecurrentReranker
from rerank_ray.models.sources import resolve_gguf, resolve_source

MODELS: dict[str, type[Reranker]] = {
    "encoder": EncoderReranker,
    "decoder": DecoderReranker,
    "recurrent": RecurrentReranker,
}

__all__ = ["MODELS", "Reranker", "build_model", "load_reranker", "resolve_gguf", "resolve_source"]


def model_class(family: str) -> type[Reranker]:
    if family not in MODELS:
        raise ValueError(f"unknown model family {family!r}; known families: {', '.join(MODELS)}")
    return MODELS[family]


def build_model(cfg: ModelConfig) -> Reranker:
    """A fresh reranker as `cfg` describes (pretrained or random weights, see ModelConfig)."""
    return model_class(cfg.family)(cfg)


def inference_dtype(cfg: ModelConfig, *, cuda: bool) -> torch.dtype:
    """``model.dtype`` resolved: auto = bfloat16 on CUDA for families whose class sets
    ``bf16_on_gpu`` (decoder, recurrent), else float32 (encoders are small, and bf16 matmuls on
    CPU are slow)."""
    if cfg.dtype == "auto":
        return torch.bfloat16 if cuda and model_class(cfg.family).bf16_on_gpu else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[cfg.dtype]


def load_reranker(path: str | Path, *, inference: bool = False) -> Reranker:
    """Reload a reranker written by ``Reranker.save``: same weights, template, length and scoring.

    Weights load as float32 on the CPU; ``inference=True`` (evaluation) moves the model to the
    GPU when there is one, casts it to :func:`inference_dtype` and sets eval mode."""
    path = Path(path)
    meta_path = path / META_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"{path} is not a saved rerank_ray model: {META_FILE} is missing "
            "(it is written by Reranker.save, next to the Hugging Face weights)"
        )
    meta = json.loads(meta_path.read_text())
    cfg = validate(ModelConfig, meta["model"])
    if meta["family"] != cfg.family:
        raise ValueError(f"{meta_path}: family {meta['family']!r} disagrees with model.family {cfg.family!r}")
    model = model_class(cfg.family).from_saved(path, cfg)
    if not inference:
        return model
    cuda = torch.cuda.is_available()
    return model.to("cuda" if cuda else "cpu", inference_dtype(cfg, cuda=cuda)).eval()
