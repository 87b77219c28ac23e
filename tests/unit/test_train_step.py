"""The per-step function of the training loop, without Ray or DeepSpeed: training mode, dropout,
and the test-only fault hook."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import MambaConfig

from rerank_ray.config import ModelConfig, RunConfig, TrainConfig
from rerank_ray.losses import build_loss
from rerank_ray.models import build_model
from rerank_ray.models.base import apply_dropout
from rerank_ray.train.loop import FAIL_AT_STEP_ENV, injected_failure_step, train_step
from tests.conftest import TINY_BERT


class PlainEngine(torch.nn.Module):
    """The slice of DeepSpeed's engine interface that train_step uses, over plain SGD."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module
        self.device = torch.device("cpu")
        self.optimizer = torch.optim.SGD(module.parameters(), lr=0.1)

    def forward(self, **batch: torch.Tensor) -> torch.Tensor:
        return self.module(**batch)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> None:
        self.optimizer.step()
        self.optimizer.zero_grad()


def run_cfg(dropout: float | None) -> RunConfig:
    return RunConfig.from_dict(
        {
            "model": {**TINY_BERT, "dropout": dropout},
            "groups": {"group_size": 2},
            "train": {"micro_batch_groups": 2},
        }
    )


BATCH = {
    "query": np.array(["what is a cell", "protein folding"], dtype=object),
    "docs": np.array([np.array(["cells live", "a rock"]), np.array(["helices fold", "a car"])], dtype=object),
}


def dropout_states(model: torch.nn.Module) -> list[tuple[bool, float]]:
    return [(m.training, m.p) for m in model.modules() if isinstance(m, torch.nn.Dropout)]


@pytest.mark.parametrize("dropout", [None, 0.2])
def test_every_dropout_is_active_during_a_training_step(dropout):
    cfg = run_cfg(dropout)
    # from_pretrained hands the model over in eval mode; DeepSpeed does not change that.
    model = build_model(cfg.model).eval()
    seen: list[list[tuple[bool, float]]] = []
    model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(dropout_states(module)), with_kwargs=True
    )

    loss, pairs, tokens = train_step(PlainEngine(model), build_loss(cfg.loss), BATCH, cfg)

    assert len(seen) == 1 and len(seen[0]) >= 4, seen
    expected_p = 0.1 if dropout is None else dropout  # None: MiniLM's own hidden_dropout_prob
    assert all(training for training, _ in seen[0]), seen[0]
    assert all(p == pytest.approx(expected_p) for _, p in seen[0]), seen[0]
    assert pairs == 4 and tokens > 0 and np.isfinite(loss)


def test_dropout_zero_turns_every_dropout_off():
    model = build_model(run_cfg(0.0).model)
    states = dropout_states(model)
    assert states and all(p == 0.0 for _, p in states)
    saved_cfg = model.model.config
    assert saved_cfg.hidden_dropout_prob == 0.0 and saved_cfg.attention_probs_dropout_prob == 0.0


def test_dropout_on_a_family_without_a_dropout_setting_fails_clearly():
    with pytest.raises(ValueError, match=r"model.dropout=0.1: MambaConfig .* has no dropout setting"):
        apply_dropout(MambaConfig(), ModelConfig(family="recurrent", source="x", dropout=0.1))
    apply_dropout(MambaConfig(), ModelConfig(family="recurrent", source="x"))  # None: nothing to set


def test_fault_hook_is_an_environment_variable_not_a_config_field(monkeypatch):
    assert "inject_failure_at_step" not in TrainConfig.model_fields
    monkeypatch.delenv(FAIL_AT_STEP_ENV, raising=False)
    assert injected_failure_step() is None
    monkeypatch.setenv(FAIL_AT_STEP_ENV, "3")
    assert injected_failure_step() == 3
    monkeypatch.setenv(FAIL_AT_STEP_ENV, "three")
    with pytest.raises(ValueError, match=FAIL_AT_STEP_ENV):
        injected_failure_step()
