"""Render DeepSpeed's own JSON config from a RunConfig: the one place where it is built.

Units: DeepSpeed counts "samples"; here one sample is one *group* (1 positive + negatives),
so ``train_micro_batch_size_per_gpu`` is ``train.micro_batch_groups`` and
``train_batch_size = micro_batch_groups * grad_accum * world_size`` groups per optimizer step.

The optimizer is DeepSpeed's too: AdamW (``torch_adam`` selects ``torch.optim.AdamW``, with
torch's fused kernel, which runs everywhere; with optimizer offload DeepSpeed needs its
``DeepSpeedCPUAdam``). The LR schedule is not in that config: `lr_schedule` gives ``deepspeed.initialize(lr_scheduler=...)``
transformers' ``get_linear_schedule_with_warmup`` (linear warmup from 0 over
``round(warmup_ratio * total_steps)`` steps, then linear decay to 0 at ``total_steps``).
DeepSpeed's own ``WarmupDecayLR`` is not that schedule: it raises ``warmup_num_steps`` to at
least 2 and its warmup starts at 0, so with ``warmup_ratio: 0`` the first optimizer step ran at
lr 0 and the second at half the lr (deepspeed 0.19 ``runtime/lr_schedules.py``, ``WarmupLR``).

Optimizer step k (1-based) runs at ``learning_rate * lambda(k - 1)``, where lambda is
transformers' ``_get_linear_schedule_with_warmup_lr_lambda``; DeepSpeed steps the scheduler
once per optimizer step (after each accumulation window), and saves and restores its state with
the engine's checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from rerank_ray.config import RunConfig


def precision(cfg: RunConfig) -> str:
    """``bf16`` or ``fp32``: ``auto`` means bf16 on GPU, fp32 on CPU (fp16 does not run on CPU)."""
    if cfg.deepspeed.precision == "auto":
        return "bf16" if cfg.scaling.use_gpu else "fp32"
    return cfg.deepspeed.precision


def deepspeed_config(cfg: RunConfig, *, world_size: int) -> dict[str, Any]:
    """DeepSpeed config for `world_size` workers; the LR schedule is `lr_schedule`, passed to
    ``deepspeed.initialize`` beside it."""
    ds, tr = cfg.deepspeed, cfg.train
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.zero_stage >= 1:
        zero.update(overlap_comm=False, contiguous_gradients=True)
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": cfg.scaling.use_gpu}
    if ds.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": cfg.scaling.use_gpu}
    if ds.zero_stage == 3:
        # Gather the partitioned weights on save, so the final export is one HF checkpoint.
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return {
        "train_micro_batch_size_per_gpu": tr.micro_batch_groups,
        "gradient_accumulation_steps": tr.grad_accum,
        "train_batch_size": tr.micro_batch_groups * tr.grad_accum * world_size,
        "gradient_clipping": tr.max_grad_norm,
        "bf16": {"enabled": precision(cfg) == "bf16"},
        "fp16": {"enabled": False},
        "zero_optimization": zero,
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": tr.learning_rate,
                "betas": [0.9, 0.999],
                "eps": 1e-8,
                "weight_decay": tr.weight_decay,
                "torch_adam": not ds.offload_optimizer,
                # torch's fused AdamW kernel (CPU and CUDA): one pass over each parameter instead
                # of a Python loop of tensor ops (the default's cost on a small model:
                # bench/optimizer.py, docs/BENCHMARKS.md).
                **({"fused": True} if not ds.offload_optimizer else {}),
            },
        },
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def warmup_steps(cfg: RunConfig, total_steps: int) -> int:
    """The schedule's warmup length: ``round(warmup_ratio * total_steps)`` optimizer steps."""
    return int(round(cfg.train.warmup_ratio * total_steps))


def lr_schedule(cfg: RunConfig, *, total_steps: int) -> Callable[[Any], Any]:
    """What ``deepspeed.initialize(lr_scheduler=...)`` calls with the optimizer it built from
    `deepspeed_config`: transformers' linear warmup, then linear decay to 0 at `total_steps`
    optimizer steps (see the module docstring)."""
    from transformers import get_linear_schedule_with_warmup

    return partial(
        get_linear_schedule_with_warmup,
        num_warmup_steps=warmup_steps(cfg, total_steps),
        num_training_steps=total_steps,
    )
