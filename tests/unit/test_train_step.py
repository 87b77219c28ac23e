"""The training loop's phases without a Ray cluster or DeepSpeed: the per-step function (training
mode, dropout), step counting, resume-skipping, reports, restore, and the test-only fault hook;
and the plain baseline loop bench/ratios.py times it against (same training mode)."""

from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import pytest
import torch
from transformers import MambaConfig

from rerank_ray.config import PROJECT_ROOT, ModelConfig, RunConfig, TrainConfig
from rerank_ray.losses import build_loss
from rerank_ray.models import build_model
from rerank_ray.models.base import apply_dropout
from rerank_ray.train.loop import (
    CKPT_TAG,
    FAIL_AT_STEP_ENV,
    STATE_FILE,
    CheckpointClock,
    LoopState,
    MetricWindow,
    epoch_batches,
    injected_failure_step,
    report_due,
    restore,
    train_step,
)
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


def test_the_plain_training_baseline_runs_with_dropout_on_like_the_loop(monkeypatch):
    # bench/ is a folder of scripts, not a package: load the module from its file.
    spec = importlib.util.spec_from_file_location("baselines", PROJECT_ROOT / "bench" / "baselines.py")
    baselines = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "baselines", baselines)  # its dataclasses look themselves up
    spec.loader.exec_module(baselines)
    cfg = run_cfg(None)
    model = build_model(cfg.model).eval()  # as from_pretrained hands it over
    seen: list[list[tuple[bool, float]]] = []
    model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(dropout_states(module)), with_kwargs=True
    )
    batches = [(list(BATCH["query"]), [list(d) for d in BATCH["docs"]])]
    baselines.plain_train(
        model, model.tokenize, batches, build_loss(cfg.loss),
        learning_rate=1e-3, weight_decay=0.0, max_grad_norm=1.0, threads=1, warmup=0,
    )  # fmt: skip
    assert len(seen) == 1 and len(seen[0]) >= 4, seen
    assert all(training for training, _ in seen[0]), seen[0]


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


# -- the loop's phases, without Ray ------------------------------------------------------------


class ListShard:
    """A Ray Data shard stand-in: `iter_batches` yields the numbered batches of one epoch."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.seeds: list[int] = []

    def iter_batches(self, *, local_shuffle_seed: int, **_: object):
        self.seeds.append(local_shuffle_seed)
        return iter(range(self.n))


def run_epochs(state: LoopState, shard: ListShard, cfg: RunConfig, stop_after: int | None = None):
    """The loop's counting skeleton: (epoch, batch) consumed and the steps that completed."""
    seen, steps = [], []
    while state.epoch < cfg.train.epochs:
        for batch in epoch_batches(shard, cfg, state):
            if stop_after is not None and len(seen) == stop_after:
                return seen, steps
            seen.append((state.epoch, batch))
            if state.count_batch(cfg.train.grad_accum):
                steps.append(state.step)
        state.next_epoch()
    return seen, steps


def test_steps_count_once_per_accumulation_window():
    cfg = RunConfig.from_dict({"train": {"epochs": 2, "grad_accum": 2, "seed": 3}})
    shard = ListShard(5)
    seen, steps = run_epochs(LoopState(), shard, cfg)
    assert len(seen) == 10 and steps == [1, 2, 3, 4]  # 5 batches, accum 2: 2 steps per epoch
    assert shard.seeds == [3000, 3001]  # one seeded order per epoch


def test_a_restored_run_skips_the_batches_it_consumed_and_sees_the_same_order():
    cfg = RunConfig.from_dict({"train": {"epochs": 2, "grad_accum": 2}})
    uninterrupted, all_steps = run_epochs(LoopState(), ListShard(5), cfg)

    state = LoopState()
    before, steps = run_epochs(state, ListShard(5), cfg, stop_after=7)  # killed in epoch 1
    saved = json.loads(json.dumps(state.to_json()))  # what train_state.json holds
    after, more = run_epochs(LoopState.from_json(saved), ListShard(5), cfg)
    assert before + after == uninterrupted and steps + more == all_steps


class RowShard:
    """A Ray Data shard stand-in holding `rows` groups: `iter_batches` cuts them into batches of
    `batch_size`, dropping a short last batch when asked to (as Ray Data's does)."""

    def __init__(self, rows: int) -> None:
        self.rows = rows

    def iter_batches(self, *, batch_size: int, drop_last: bool, **_: object):
        full, rest = divmod(self.rows, batch_size)
        return iter(range(full + (1 if rest and not drop_last else 0)))


def steps_the_loop_takes(cfg: RunConfig, n_groups: int) -> list[int]:
    """Each worker's optimizer steps, by the loop's own skeleton (``train_loop_per_worker``:
    epochs of ``epoch_batches``, ``count_batch``, stopping at ``train.max_steps``), on the
    shards Ray Train gives: ``streaming_split(workers, equal=True)``, the same number of groups
    on every worker and the remainder dropped (ray/train/_internal/data_config.py)."""
    workers = cfg.scaling.num_workers
    total_steps = cfg.train.max_steps or float("inf")
    steps = []
    for _ in range(workers):
        shard, state, done = RowShard(n_groups // workers), LoopState(), False
        while state.epoch < cfg.train.epochs and not done:
            for _batch in epoch_batches(shard, cfg, state):
                if state.count_batch(cfg.train.grad_accum) and state.step >= total_steps:
                    done = True
                    break
            state.next_epoch()
        steps.append(state.step)
    return steps


@pytest.mark.parametrize(
    ("groups", "batch", "workers", "accum", "epochs", "max_steps"),
    [
        (64, 2, 2, 1, 1, None),  # divisible
        (65, 2, 2, 1, 1, None),  # one group left over by the split
        (67, 4, 2, 1, 2, None),  # shards of 33: a short last batch, dropped
        (101, 3, 3, 2, 2, None),  # shards of 33: 11 batches, a partial window per epoch
        (660, 4, 1, 2, 2, None),  # 165 batches, accum 2
        (50, 2, 4, 1, 3, 10),  # capped by max_steps
    ],
)
def test_the_forecast_counts_the_steps_the_training_loop_takes(
    groups, batch, workers, accum, epochs, max_steps
):
    from rerank_ray.study.forecast import train_pairs
    from rerank_ray.train.driver import plan_steps

    cfg = RunConfig.from_dict(
        {
            "scaling": {"num_workers": workers},
            "groups": {"group_size": 4},
            "train": {
                "micro_batch_groups": batch,
                "grad_accum": accum,
                "epochs": epochs,
                "max_steps": max_steps,
            },
        }
    )
    plan = plan_steps(cfg, groups)
    assert steps_the_loop_takes(cfg, groups) == [plan["total_steps"]] * workers
    assert train_pairs(cfg, groups) == plan["total_steps"] * batch * accum * workers * 4


def test_reports_are_due_on_their_step_counts():
    train = TrainConfig(log_every_steps=2, checkpoint_every_steps=3)
    assert [report_due(s, train) for s in range(1, 7)] == [
        None, "metrics", "checkpoint", "metrics", None, "checkpoint",
    ]  # fmt: skip
    assert report_due(3, TrainConfig(log_every_steps=1)) == "metrics"


def test_a_checkpoint_is_due_when_its_minutes_have_passed_and_the_clock_restarts_after_one():
    train = TrainConfig(log_every_steps=2)
    assert report_due(1, train, time_due=True) == "checkpoint"  # time wins over the step counts
    assert report_due(2, train, time_due=False) == "metrics"
    clock = CheckpointClock(minutes=0.5)
    assert not clock.due(world=1, device="cpu")
    clock.last -= 31.0  # 31 s of training later
    assert clock.due(world=1, device="cpu")
    clock.reset()
    assert not clock.due(world=1, device="cpu")
    off = CheckpointClock(minutes=None)
    off.last -= 10**6
    assert not off.due(world=1, device="cpu")


def test_a_state_counts_its_checkpoints_and_its_records_say_where_it_resumed():
    window, state = MetricWindow(), LoopState(step=8, checkpoints=2, checkpoint_s=1.5)
    window.add(1.0, 8, 100)
    record = window.flush(world=1, lr=0.5, state=state, t_start=0.0)
    assert (record["checkpoints"], record["checkpoint_s"]) == (2, 1.5) and "resumed_from_step" not in record
    state.resumed_from_step = 4
    window.add(1.0, 8, 100)
    assert window.flush(world=1, lr=0.5, state=state, t_start=0.0)["resumed_from_step"] == 4
    # A train_state.json written before these fields existed still restores.
    assert LoopState.from_json({"epoch": 0, "step": 3, "batches_in_epoch": 3, "history": []}).step == 3


def test_metric_window_averages_over_micro_batches_and_starts_empty_again():
    window, state = MetricWindow(), LoopState(epoch=1, step=4)
    window.add(1.0, 8, 100)
    window.add(3.0, 8, 60)
    record = window.flush(world=1, lr=0.5, state=state, t_start=0.0)
    assert record["loss"] == 2.0 and record["lr"] == 0.5 and (record["epoch"], record["step"]) == (1, 4)
    assert record["pairs_per_s"] > 0 and record["tokens_per_s"] == pytest.approx(record["pairs_per_s"] * 10)
    assert window.flush(world=1, lr=0.5, state=state, t_start=0.0) is None


def test_restore_loads_a_training_state_and_refuses_a_final_export(tmp_path):
    from ray.train import Checkpoint

    class Engine:
        loaded: list[str] = []

        def load_checkpoint(self, path: str, tag: str) -> None:
            self.loaded.append(tag)

    assert restore(Engine(), None) == LoopState()
    (tmp_path / STATE_FILE).write_text(json.dumps(LoopState(1, 6, 2, [{"loss": 1.0}]).to_json()))
    engine = Engine()
    restored = restore(engine, Checkpoint.from_directory(tmp_path))
    # A restored state says where it resumed: the checkpoint's step (its records carry it).
    assert restored == LoopState(1, 6, 2, [{"loss": 1.0}], resumed_from_step=6)
    assert engine.loaded == [CKPT_TAG]
    (tmp_path / STATE_FILE).unlink()
    with pytest.raises(RuntimeError, match="a finished run's export"):
        restore(Engine(), Checkpoint.from_directory(tmp_path))
