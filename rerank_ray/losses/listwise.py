"""Listwise losses over a group: contrastive (labels) and distillation (teacher scores).

Every loss takes ``scores: Tensor[queries, group_size]``, raw student logits with the positive
at index 0 of each group, and ``teacher: Tensor[queries, group_size] | None``, raw teacher
logits in the same order, and returns a scalar averaged over queries. Losses never see models.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rerank_ray.config import LossConfig
from rerank_ray.loss_names import LOSS_SPECS
from rerank_ray.losses._checks import check_scores


class Contrastive:
    """InfoNCE / localized contrastive estimation (van den Oord et al. 2018; Gao et al. 2021,
    "Rethink Training of BERT Rerankers in Multi-Stage Retrieval Pipeline")::

        L = mean over queries of  -log( exp(s_0 / T) / sum_j exp(s_j / T) )

    i.e. cross-entropy of ``scores / loss.temperature`` with target index 0. Equal scores give
    ``log(group_size)``. Teacher scores, if given, are ignored.
    """

    name = "contrastive"
    needs_teacher = LOSS_SPECS[name].needs_teacher

    def __init__(self, cfg: LossConfig) -> None:
        self.temperature = cfg.temperature

    def __call__(self, scores: torch.Tensor, teacher: torch.Tensor | None = None) -> torch.Tensor:
        check_scores(self.name, scores, teacher, needs_teacher=self.needs_teacher)
        return contrastive(scores, self.temperature)


class Distillation:
    """Listwise KL distillation (Hinton et al. 2015, "Distilling the Knowledge in a Neural
    Network"; the loss of Xu et al. 2025, arXiv 2507.08336)::

        p_t = softmax(t / T_teacher),  p_s = softmax(s / T_student)   (over the group)
        L = mean over queries of  sum_j p_t,j * (log p_t,j - log p_s,j)   [ * T_student**2 ]

    The ``T_student**2`` factor (``loss.temperature_squared``) keeps gradient magnitudes
    comparable across temperatures. Teacher scores are constants: no gradient flows into them.
    """

    name = "distillation"
    needs_teacher = LOSS_SPECS[name].needs_teacher

    def __init__(self, cfg: LossConfig) -> None:
        self.teacher_temperature = cfg.teacher_temperature
        self.student_temperature = cfg.student_temperature
        self.temperature_squared = cfg.temperature_squared

    def __call__(self, scores: torch.Tensor, teacher: torch.Tensor | None = None) -> torch.Tensor:
        check_scores(self.name, scores, teacher, needs_teacher=self.needs_teacher)
        assert teacher is not None  # checked above; narrows the type
        return distillation(
            scores,
            teacher,
            self.teacher_temperature,
            self.student_temperature,
            self.temperature_squared,
        )


class Mix:
    """Weighted mix of the two listwise losses, ``w = loss.mix_weight``::

    L = (1 - w) * contrastive(s) + w * distillation(s, t)
    """

    name = "mix"
    needs_teacher = LOSS_SPECS[name].needs_teacher

    def __init__(self, cfg: LossConfig) -> None:
        self.weight = cfg.mix_weight
        self.contrastive = Contrastive(cfg)
        self.distillation = Distillation(cfg)

    def __call__(self, scores: torch.Tensor, teacher: torch.Tensor | None = None) -> torch.Tensor:
        check_scores(self.name, scores, teacher, needs_teacher=self.needs_teacher)
        return (1.0 - self.weight) * self.contrastive(scores) + self.weight * self.distillation(
            scores, teacher
        )


def contrastive(scores: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Cross-entropy of ``scores [Q, G] / temperature`` with the positive at index 0."""
    logits = scores.float() / temperature
    target = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)
    return F.cross_entropy(logits, target)


def distillation(
    scores: torch.Tensor,
    teacher: torch.Tensor,
    teacher_temperature: float = 1.0,
    student_temperature: float = 1.0,
    temperature_squared: bool = False,
) -> torch.Tensor:
    """KL(softmax(teacher / T_t) || softmax(scores / T_s)), summed over the group, mean over queries."""
    log_p_student = F.log_softmax(scores.float() / student_temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher.detach().float() / teacher_temperature, dim=-1)
    # kl_div(input, target) = sum target * (log target - input); "batchmean" divides by Q.
    loss = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return loss * student_temperature**2 if temperature_squared else loss
