"""Render DeepSpeed's own JSON config from a RunConfig: the one place where it is built.

Units: DeepSpeed counts "samples"; here one sample is one *group* (1 positive + negatives),
so ``train_micro_batch_size_per_gpu`` is ``train.micro_batch_groups`` and
``train_batch_size = micro_batch_groups * grad_accum * world_size`` groups per optimizer step.

The optimizer and LR schedule are DeepSpeed's too: AdamW (``torch_adam`` selects
``torch.optim.AdamW``, fused, which runs everywhere; with optimizer offload DeepSpeed needs its
``DeepSpeedCPUAdam``) and ``WarmupDecayLR`` (linear warmup from 0, then linear decay to 0).
"""

from __future__ import annotations

from typing import Any

from rerank_ray.config import RunConfig


def precision(cfg: RunConfig) -> str:
    """``bf16`` or ``fp32``: ``auto`` means bf16 on GPU, fp32 on CPU (fp16 does not run on CPU)."""
    if cfg.deepspeed.precision == "auto":
        return "bf16" if cfg.scaling.use_gpu else "fp32"
    return cfg.deepspeed.precision


def deepspeed_config(cfg: RunConfig, *, total_steps: int, world_size: int) -> dict[str, Any]:
    """DeepSpeed config for `total_steps` optimizer steps on `world_size` workers."""
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
    warmup = int(round(tr.warmup_ratio * total_steps))
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
                # of a Python loop of tensor ops. On 2 CPU cores the default per-tensor AdamW
                # step of a 6-layer MiniLM cost as much as the forward pass (bench/optimizer.py).
                **({"fused": True} if not ds.offload_optimizer else {}),
            },
        },
        "scheduler": {
            "type": "WarmupDecayLR",
            "params": {
                "warmup_min_lr": 0.0,
                "warmup_max_lr": tr.learning_rate,
                # DeepSpeed requires at least one warmup step.
                "warmup_num_steps": max(warmup, 1),
                "warmup_type": "linear",
                "total_num_steps": max(total_steps, 1),
            },
        },
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
