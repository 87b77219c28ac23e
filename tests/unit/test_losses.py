"""Losses against hand-computed values (no models, no Ray)."""

from __future__ import annotations

import math

import pytest
import torch

from rerank_ray.config import LossConfig
from rerank_ray.losses import LOSSES, build_loss


def loss(name: str, **fields):
    return build_loss(LossConfig(name=name, **fields))


@pytest.mark.parametrize("name", list(LOSSES))
def test_every_loss_is_a_finite_scalar_with_gradient(name):
    scores = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 0.3]], requires_grad=True)
    teacher = torch.tensor([[3.0, 1.0, 0.0], [1.0, 0.0, 0.5]])
    value = loss(name)(scores, teacher)
    assert value.shape == ()
    assert torch.isfinite(value)
    value.backward()
    assert scores.grad is not None and scores.grad.abs().sum() > 0


@pytest.mark.parametrize("name", list(LOSSES))
def test_every_loss_names_both_shapes_on_mismatch(name):
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(2, 4\)"):
        loss(name)(torch.zeros(2, 4), torch.zeros(2, 3))


@pytest.mark.parametrize("name", list(LOSSES))
def test_every_loss_rejects_scores_that_are_not_groups(name):
    with pytest.raises(ValueError, match="queries, group_size"):
        loss(name)(torch.zeros(4), torch.zeros(4))


@pytest.mark.parametrize("name", [n for n in LOSSES if LossConfig(name=n).needs_teacher])
def test_losses_that_need_a_teacher_say_so(name):
    with pytest.raises(ValueError, match="needs teacher scores"):
        loss(name)(torch.zeros(2, 4), None)


def test_contrastive_equal_scores_is_log_group_size():
    assert loss("contrastive")(torch.zeros(3, 8), None).item() == pytest.approx(math.log(8))


def test_contrastive_hand_value_and_temperature():
    scores = torch.tensor([[2.0, 0.0, 1.0]])
    expected = -2.0 + math.log(math.exp(2.0) + 1.0 + math.exp(1.0))
    assert loss("contrastive")(scores, None).item() == pytest.approx(expected, rel=1e-6)
    # T = 0.5 doubles every logit.
    sharp = -4.0 + math.log(math.exp(4.0) + 1.0 + math.exp(2.0))
    assert loss("contrastive", temperature=0.5)(scores, None).item() == pytest.approx(sharp, rel=1e-6)
    # With the positive on top, a lower temperature gives a lower loss.
    assert sharp < expected


def test_contrastive_descent_raises_the_positive():
    scores = torch.tensor([[0.5, 1.0, -0.2]], requires_grad=True)
    loss("contrastive")(scores, None).backward()
    assert scores.grad[0, 0] < 0
    assert (scores.grad[0, 1:] > 0).all()


def test_distillation_student_equals_teacher_is_zero():
    scores = torch.tensor([[1.0, -2.0, 0.5, 3.0], [0.0, 0.1, 0.2, 0.3]])
    assert loss("distillation")(scores, scores.clone()).item() == pytest.approx(0.0, abs=1e-7)


def test_distillation_hand_value():
    student = torch.tensor([[0.0, 0.0, 0.0]])
    teacher = torch.tensor([[math.log(2.0), 0.0, 0.0]])
    # p_t = (1/2, 1/4, 1/4), p_s = (1/3, 1/3, 1/3)
    p_t = [0.5, 0.25, 0.25]
    expected = sum(p * math.log(p / (1 / 3)) for p in p_t)
    assert loss("distillation")(student, teacher).item() == pytest.approx(expected, rel=1e-6)


def test_distillation_averages_over_queries():
    student = torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]])
    teacher = torch.tensor([[math.log(2.0), 0.0, 0.0], [1.0, 2.0, 3.0]])
    single = loss("distillation")(student[:1], teacher[:1]).item()
    assert loss("distillation")(student, teacher).item() == pytest.approx(single / 2, rel=1e-6)


def test_distillation_temperatures():
    student = torch.tensor([[0.0, 0.0, 0.0]])
    teacher = torch.tensor([[2.0 * math.log(2.0), 0.0, 0.0]])
    # Teacher temperature 2 halves the teacher logits: the same target as the hand example.
    p_t = [0.5, 0.25, 0.25]
    expected = sum(p * math.log(p / (1 / 3)) for p in p_t)
    assert loss("distillation", teacher_temperature=2.0)(student, teacher).item() == pytest.approx(
        expected, rel=1e-6
    )
    scores = torch.tensor([[0.3, -1.0, 2.0]])
    target = torch.tensor([[1.0, 0.0, -1.0]])
    plain = loss("distillation", student_temperature=2.0)(scores, target).item()
    squared = loss("distillation", student_temperature=2.0, temperature_squared=True)(scores, target).item()
    assert squared == pytest.approx(4.0 * plain, rel=1e-6)


def test_distillation_gives_no_gradient_to_the_teacher():
    scores = torch.tensor([[0.3, -1.0, 2.0]], requires_grad=True)
    teacher = torch.tensor([[1.0, 0.0, -1.0]], requires_grad=True)
    loss("distillation")(scores, teacher).backward()
    assert teacher.grad is None


def test_mix_is_the_weighted_sum():
    scores = torch.tensor([[0.3, -1.0, 2.0], [1.0, 1.5, 0.0]])
    teacher = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, 1.0]])
    c = loss("contrastive")(scores, None).item()
    d = loss("distillation")(scores, teacher).item()
    for w in (0.0, 0.25, 1.0):
        assert loss("mix", mix_weight=w)(scores, teacher).item() == pytest.approx(
            (1 - w) * c + w * d, rel=1e-6
        )


def test_margin_mse_hand_value():
    scores = torch.tensor([[3.0, 1.0, 2.0]])  # margins 2, 1
    teacher = torch.tensor([[5.0, 2.0, 5.0]])  # margins 3, 0
    assert loss("margin_mse")(scores, teacher).item() == pytest.approx(((2 - 3) ** 2 + (1 - 0) ** 2) / 2)


def test_margin_mse_ignores_a_per_query_offset():
    teacher = torch.tensor([[5.0, 2.0, 4.0], [0.0, -1.0, 1.0]])
    shifted = teacher + torch.tensor([[10.0], [-3.0]])
    assert loss("margin_mse")(shifted, teacher).item() == pytest.approx(0.0, abs=1e-6)


# -- the torch-free registry of loss names (rerank_ray/loss_names.py) ---------------------------


def _python(code: str) -> None:
    """Run `code` in a fresh interpreter (sys.modules starts empty) from the project root."""
    import subprocess
    import sys

    from rerank_ray.config import PROJECT_ROOT

    done = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_loading_a_config_and_asking_whether_a_loss_needs_a_teacher_imports_no_torch():
    _python(
        "import sys\n"
        "import rerank_ray.config as c\n"
        "assert c.LossConfig(name='distillation').needs_teacher\n"
        "assert not c.LossConfig(name='contrastive').needs_teacher\n"
        "c.load_config(overrides=['loss.name=mix'])\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )


@pytest.mark.parametrize(
    "order", [("rerank_ray.losses", "rerank_ray.config"), ("rerank_ray.config", "rerank_ray.losses")]
)
def test_config_and_losses_import_in_either_order(order):
    first, second = order
    _python(f"import {first}\nimport {second}\nimport rerank_ray.losses as L\nassert L.build_loss\n")


def test_config_does_not_import_the_losses_package():
    """No cycle: config.py (which the losses import) imports the registry, never the losses."""
    import ast

    from rerank_ray.config import PROJECT_ROOT

    tree = ast.parse((PROJECT_ROOT / "rerank_ray" / "config.py").read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    assert not {m for m in imported if m and m.startswith("rerank_ray.losses")}
