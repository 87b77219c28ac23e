"""The DeepSpeed engine the training loop builds (`train.loop._setup`), in this process on one
CPU rank without Ray: its LR schedule is transformers' linear warmup then linear decay to 0, and
the first optimizer step of a run without warmup changes the weights."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch

from rerank_ray.config import RunConfig
from rerank_ray.losses import build_loss
from rerank_ray.train.loop import _setup, train_step
from tests.conftest import TINY_BERT, linear_output_dtypes, shift_invariant

LR = 1e-3
BATCH = {
    "query": np.array(["what is a cell", "protein folding"], dtype=object),
    "docs": np.array([np.array(["cells live", "a rock"]), np.array(["helices fold", "a car"])], dtype=object),
}
# BATCH as the (query, document) pairs `train_step` scores: each query once per document.
PAIRS = (
    [q for q in BATCH["query"] for _ in BATCH["docs"][0]],
    [str(d) for group in BATCH["docs"] for d in group],
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def one_rank():
    """The environment of a one-worker run (what Ray Train gives its worker), and the gloo
    process group DeepSpeed builds from it, destroyed after the module."""
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "RANK": "0", "LOCAL_RANK": "0"}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {**env, "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1"}.items():
            mp.setenv(key, value)
        yield
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def engine_for(warmup_ratio: float, total_steps: int, autocast: str = "auto"):
    cfg = RunConfig.from_dict(
        {
            "model": {**TINY_BERT, "autocast": autocast},
            "groups": {"group_size": 2},
            "train": {"micro_batch_groups": 2, "learning_rate": LR, "warmup_ratio": warmup_ratio},
            "scaling": {"cpus_per_worker": 1},
            "deepspeed": {"zero_stage": 0},
        }
    )
    engine, _ = _setup(cfg, total_steps, 1)
    return engine, cfg


def step_lrs(warmup_ratio: float, total_steps: int) -> list[float]:
    """The lr each optimizer step of a `total_steps` run runs at, read from the engine."""
    engine, cfg = engine_for(warmup_ratio, total_steps)
    loss_fn, lrs = build_loss(cfg.loss), []
    for _ in range(total_steps):
        lrs.append(engine.get_lr()[0])
        train_step(engine, loss_fn, BATCH, cfg)
    return lrs


@pytest.mark.parametrize(
    ("warmup_ratio", "factors"),
    [
        # No warmup: the full lr at the first step, then down by 1/10 per step.
        (0.0, [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1]),
        # 2 warmup steps (0/2, 1/2 of the lr), then (10 - k) / (10 - 2) for step index k >= 2.
        (0.2, [0.0, 0.5, 1.0, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8]),
    ],
)
def test_the_engine_runs_transformers_linear_warmup_then_decay(one_rank, warmup_ratio, factors):
    assert step_lrs(warmup_ratio, 10) == pytest.approx([LR * f for f in factors])


def test_the_schedule_is_get_linear_schedule_with_warmup():
    from transformers import get_linear_schedule_with_warmup

    from rerank_ray.train.deepspeed import lr_schedule, warmup_steps

    cfg = RunConfig.from_dict({"train": {"learning_rate": LR, "warmup_ratio": 0.25}})
    assert warmup_steps(cfg, 100) == 25
    ours, theirs = (torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=LR) for _ in range(2))
    ours_schedule = lr_schedule(cfg, total_steps=100)(ours)
    reference = get_linear_schedule_with_warmup(theirs, num_warmup_steps=25, num_training_steps=100)
    for _ in range(100):
        assert ours_schedule.get_last_lr() == reference.get_last_lr()
        for optimizer, schedule in ((ours, ours_schedule), (theirs, reference)):
            optimizer.step()
            schedule.step()


def test_one_step_without_warmup_changes_every_weight(one_rank):
    engine, cfg = engine_for(0.0, 1)
    before = {name: p.detach().clone() for name, p in engine.module.named_parameters()}
    train_step(engine, build_loss(cfg.loss), BATCH, cfg)
    params = dict(engine.module.named_parameters())
    unchanged = [n for n, p in params.items() if torch.equal(before[n], p) and not shift_invariant(n)]
    assert not unchanged, f"parameters that did not change after one step: {unchanged}"


def test_the_score_head_bias_gets_only_rounding_noise_from_a_softmax_loss(one_rank):
    """Why the check above leaves the head's bias out: InfoNCE does not change when all of a
    group's scores shift together, so d loss / d bias is 0 up to float rounding."""
    engine, cfg = engine_for(0.0, 1)
    reranker = engine.module
    reranker.train()
    scores = reranker(**reranker.tokenize(*PAIRS)).float().view(2, 2)
    build_loss(cfg.loss)(scores, None).backward()
    grads = {n: p.grad for n, p in reranker.named_parameters() if p.grad is not None}
    (bias,) = [n for n in grads if shift_invariant(n)]
    weight = bias.replace("bias", "weight")
    assert grads[bias].abs().max() < 1e-6 * grads[weight].abs().max()


def test_the_engine_updates_the_weights_as_torch_adamw_with_clipping_does(one_rank):
    """The DeepSpeed engine the loop trains with (ZeRO-0, one rank, its all-reduce skipped,
    torch's fused AdamW, transformers' schedule) against the plain recipe written out by hand:
    the same weights after a few steps, from the same start, on the same batch, dropout off."""
    import copy

    from transformers import get_linear_schedule_with_warmup

    from rerank_ray.train.loop import _param_groups

    cfg = RunConfig.from_dict(
        {
            "model": {**TINY_BERT, "dropout": 0.0},
            "groups": {"group_size": 2},
            # Clipping that binds (gradient norms here are ~1e-3), weight decay large enough to see.
            "train": {
                "micro_batch_groups": 2,
                "learning_rate": LR,
                "warmup_ratio": 0.25,
                "max_grad_norm": 2e-4,
                "weight_decay": 5.0,
            },
            "scaling": {"cpus_per_worker": 1},
            "deepspeed": {"zero_stage": 0},
        }
    )
    steps = 4
    engine, _ = _setup(cfg, steps, 1)
    plain = copy.deepcopy(engine.module)
    start = {n: p.detach().clone() for n, p in plain.named_parameters()}
    optimizer = torch.optim.AdamW(
        _param_groups(plain, cfg.train.weight_decay), lr=LR, betas=(0.9, 0.999), eps=1e-8
    )
    schedule = get_linear_schedule_with_warmup(optimizer, num_warmup_steps=1, num_training_steps=steps)
    loss_fn = build_loss(cfg.loss)
    for _ in range(steps):
        train_step(engine, loss_fn, BATCH, cfg)
        plain.train()
        loss = loss_fn(plain(**plain.tokenize(*PAIRS)).float().view(2, 2), None)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(plain.parameters(), cfg.train.max_grad_norm)
        optimizer.step()
        schedule.step()
    trained = dict(engine.module.named_parameters())
    assert all(not torch.equal(start[n], p) for n, p in trained.items() if not shift_invariant(n))
    # Fused and per-tensor AdamW round differently, and Adam turns rounding in tiny gradients
    # into ~1e-6 moves; a step moves a weight by up to ~LR. The head's bias is left out: its
    # gradient is pure rounding noise (see above), which Adam scales up to ~LR.
    for name, p in plain.named_parameters():
        if not shift_invariant(name):
            torch.testing.assert_close(trained[name], p, rtol=0, atol=LR / 50, msg=name)


def test_model_autocast_bf16_trains_with_bf16_matmuls_and_float32_weights_on_cpu(one_rank):
    """``model.autocast: bf16`` on CPU: the forward's linear layers compute in bf16, the weights
    (and DeepSpeed's fp32 optimizer) stay float32, every weight moves, and the losses follow
    the float32 run's from the same start (``off``) to bf16 rounding, without being equal."""
    losses, moved = {}, {}
    for setting in ("off", "bf16"):
        engine, cfg = engine_for(0.0, 10, autocast=setting)
        seen = linear_output_dtypes(engine.module)
        before = {name: p.detach().clone() for name, p in engine.module.named_parameters()}
        loss_fn = build_loss(cfg.loss)
        losses[setting] = np.array([train_step(engine, loss_fn, BATCH, cfg)[0] for _ in range(10)])
        assert seen == {torch.bfloat16 if setting == "bf16" else torch.float32}
        params = dict(engine.module.named_parameters())
        assert all(p.dtype == torch.float32 for p in params.values())
        moved[setting] = [n for n, p in params.items() if not torch.equal(before[n], p) or shift_invariant(n)]
    assert moved["bf16"] == list(params)
    assert not np.array_equal(losses["bf16"], losses["off"])
    assert np.abs(losses["bf16"] - losses["off"]).max() < 0.01
