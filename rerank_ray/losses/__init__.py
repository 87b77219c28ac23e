"""Losses see scores, never models.

``build_loss(cfg)`` returns a callable ``loss(scores, teacher) -> Tensor[]`` where ``scores``
and ``teacher`` are ``Tensor[queries, group_size]`` of raw logits with the positive at index 0
of every group (``teacher`` may be None for losses that do not need it). ``LOSSES`` keys are
the ``LossName`` literal in rerank_ray.config (a unit test checks they are equal); adding a
loss is one class, one line here and one test.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from rerank_ray.config import LossConfig
from rerank_ray.losses.listwise import Contrastive, Distillation, Mix
from rerank_ray.losses.pairwise import MarginMSE

# loss(scores [Q, G], teacher [Q, G] | None) -> scalar
LossFn = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]

# name -> class; the class is built with the LossConfig and called with the scores.
LOSSES: dict[str, Callable[[LossConfig], LossFn]] = {
    "contrastive": Contrastive,
    "distillation": Distillation,
    "mix": Mix,
    "margin_mse": MarginMSE,
}

__all__ = ["LOSSES", "LossFn", "build_loss"]


def build_loss(cfg: LossConfig) -> LossFn:
    """The loss `cfg.name` names, with `cfg`'s temperatures and weights."""
    if cfg.name not in LOSSES:
        raise ValueError(f"unknown loss {cfg.name!r}; known losses: {', '.join(LOSSES)}")
    return LOSSES[cfg.name](cfg)
