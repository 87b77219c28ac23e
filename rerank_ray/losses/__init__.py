"""Losses see scores, never models.

``build_loss(cfg)`` returns a callable ``loss(scores, teacher) -> Tensor[]`` where ``scores``
and ``teacher`` are ``Tensor[queries, group_size]`` of raw logits with the positive at index 0
of every group (``teacher`` may be None for losses that do not need it). The implementations
register against the torch-free registry ``rerank_ray/loss_names.py``: ``LOSSES`` keys are its
``LossName`` literal and ``LOSS_SPECS`` keys (tests/unit/test_registries.py checks they are
equal), and each class reads its ``needs_teacher`` from ``LOSS_SPECS``. ``TEACHER_LOSSES`` is
defined there (re-exported here); config, the study grid and the training driver read it
without importing torch.

Adding a loss touches:

- ``rerank_ray/losses/<listwise|pairwise|new>.py``: the class, with ``name``,
  ``needs_teacher = LOSS_SPECS[name].needs_teacher``, ``__init__(cfg: LossConfig)`` and
  ``__call__(scores, teacher)`` (start with ``check_scores``);
- this file: one line in ``LOSSES``;
- ``rerank_ray/loss_names.py``: the name in ``LossName`` and its ``LossSpec`` in ``LOSS_SPECS``
  (any new knob goes into ``LossConfig`` in ``rerank_ray/config.py``);
- ``tests/unit/test_losses.py``: a test against hand-computed values (the tests parametrized
  over ``LOSSES`` then cover it too).

A study names it in ``strategies`` with no further change (``study/config.py`` reads
``LossName``; the grid's teacher axis follows ``needs_teacher``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

from rerank_ray.config import LossConfig
from rerank_ray.loss_names import TEACHER_LOSSES
from rerank_ray.losses.listwise import Contrastive, Distillation, Mix
from rerank_ray.losses.pairwise import MarginMSE

# loss(scores [Q, G], teacher [Q, G] | None) -> scalar
LossFn = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


class Loss(Protocol):
    """What a ``LOSSES`` entry is: a class built with the LossConfig, called with the scores."""

    name: str
    # True when the loss reads teacher scores (train.teacher_scores must then be set).
    needs_teacher: bool

    def __init__(self, cfg: LossConfig) -> None: ...

    def __call__(self, scores: torch.Tensor, teacher: torch.Tensor | None = None) -> torch.Tensor: ...


LOSSES: dict[str, type[Loss]] = {
    "contrastive": Contrastive,
    "distillation": Distillation,
    "mix": Mix,
    "margin_mse": MarginMSE,
}

__all__ = ["LOSSES", "TEACHER_LOSSES", "Loss", "LossFn", "build_loss"]


def build_loss(cfg: LossConfig) -> LossFn:
    """The loss `cfg.name` names, with `cfg`'s temperatures and weights."""
    if cfg.name not in LOSSES:
        raise ValueError(f"unknown loss {cfg.name!r}; known losses: {', '.join(LOSSES)}")
    return LOSSES[cfg.name](cfg)
