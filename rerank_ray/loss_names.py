"""The losses by name and what each needs, without torch: what config validation, the study's
grid and the training driver ask about a loss before (or without) building it.

``LossName`` is the ``Literal`` of ``loss.name`` (``rerank_ray.config`` validates with it);
``LOSS_SPECS`` holds each loss's properties; ``TEACHER_LOSSES`` is derived from them. The
implementations in ``rerank_ray/losses/`` (torch) register against these names: ``LOSSES``
there has the same keys (tests/unit/test_registries.py checks it), and each class reads its
``needs_teacher`` from here, so the property has one source. This module imports nothing from
the project, so ``rerank_ray.config`` can import it at the top without a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

LossName = Literal["contrastive", "distillation", "mix", "margin_mse"]


@dataclass(frozen=True)
class LossSpec:
    # True when the loss reads teacher scores (train.teacher_scores must then be set).
    needs_teacher: bool


LOSS_SPECS: dict[str, LossSpec] = {
    "contrastive": LossSpec(needs_teacher=False),
    "distillation": LossSpec(needs_teacher=True),
    "mix": LossSpec(needs_teacher=True),
    "margin_mse": LossSpec(needs_teacher=True),
}
# The losses that read teacher scores: the one source of LossConfig.needs_teacher.
TEACHER_LOSSES: frozenset[str] = frozenset(name for name, spec in LOSS_SPECS.items() if spec.needs_teacher)
