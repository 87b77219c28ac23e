"""Pairwise losses: margins between the positive (index 0) and each negative of its group.

Same inputs as the listwise losses: ``scores`` and ``teacher`` are ``Tensor[queries,
group_size]`` of raw logits, positive first; the result is a scalar.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rerank_ray.config import LossConfig
from rerank_ray.loss_names import LOSS_SPECS
from rerank_ray.losses._checks import check_scores


class MarginMSE:
    """Margin-MSE (Hofstätter et al. 2020, "Improving Efficient Neural Ranking Models with
    Cross-Architecture Knowledge Distillation", arXiv 2010.02666), over every negative j >= 1::

        L = mean over queries and j of  ((s_0 - s_j) - (t_0 - t_j))**2

    Only score differences are matched, so the student may differ from the teacher by a
    per-query offset. No temperature applies.
    """

    name = "margin_mse"
    needs_teacher = LOSS_SPECS[name].needs_teacher

    def __init__(self, cfg: LossConfig) -> None:
        del cfg  # no parameters; the signature is the registry's

    def __call__(self, scores: torch.Tensor, teacher: torch.Tensor | None = None) -> torch.Tensor:
        check_scores(self.name, scores, teacher, needs_teacher=self.needs_teacher)
        assert teacher is not None  # checked above; narrows the type
        return margin_mse(scores, teacher)


def margin_mse(scores: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """MSE between student margins ``s_0 - s_j`` and teacher margins ``t_0 - t_j``, j >= 1."""
    scores = scores.float()
    teacher = teacher.detach().float()
    student_margins = scores[:, :1] - scores[:, 1:]
    teacher_margins = teacher[:, :1] - teacher[:, 1:]
    return F.mse_loss(student_margins, teacher_margins)
