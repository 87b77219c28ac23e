"""A toy pairwise loss, added by following docs/ARCHITECTURE.md ("where to add a loss")."""

from __future__ import annotations

import torch

from rerank_ray.config import LossConfig
from rerank_ray.losses._checks import check_scores


class Hinge:
    """Pairwise hinge with margin 1 over every negative j >= 1::

    L = mean over queries and j of  max(0, 1 - (s_0 - s_j))
    """

    name = "hinge"
    needs_teacher = False

    def __init__(self, cfg: LossConfig) -> None:
        del cfg  # no parameters; the signature is the registry's

    def __call__(self, scores: torch.Tensor, teacher: torch.Tensor | None = None) -> torch.Tensor:
        check_scores(self.name, scores, teacher, needs_teacher=self.needs_teacher)
        margins = scores[:, :1].float() - scores[:, 1:].float()
        return torch.clamp(1.0 - margins, min=0.0).mean()
