"""The per-worker training loop: one DeepSpeed engine per Ray Train worker.

The worker rebuilds everything from the plain dict it is given (``{"run": RunConfig dict,
"plan": {...}}``); nothing else crosses from the driver.

Per micro-step a worker takes ``micro_batch_groups`` groups from its Ray Data shard (columns
``query``, ``docs`` (positive first), and ``teacher_scores`` for distillation-type losses),
flattens them into ``groups x group_size`` (query, document) pairs, scores them, reshapes the
scores to ``[groups, group_size]`` and hands them to the loss. DeepSpeed does gradient
accumulation, clipping, the optimizer and the LR schedule (see ``train/deepspeed.py``).

Checkpoints (DeepSpeed's sharded engine state + ``train_state.json``) are reported through
``ray.train.report`` at the end of each epoch and every ``checkpoint_every_steps``; Ray merges
the ranks' files into one directory. A restarted attempt (Ray Train's ``FailureConfig``) loads
the latest one and skips the batches already consumed in that epoch, so the data order is the
same as in an uninterrupted run. The last report carries only the exported Hugging Face model
(``hf/``) and ``history.json``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

CKPT_TAG = "engine"
STATE_FILE = "train_state.json"


class InjectedFailure(RuntimeError):
    """Raised by `train.inject_failure_at_step` to exercise resume; not a real error."""


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on biases and normalisation weights (BERT convention)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def train_loop_per_worker(config: dict[str, Any]) -> None:
    from rerank_ray.config import RunConfig

    cfg = RunConfig.from_dict(config["run"])
    plan: dict[str, int] = config["plan"]
    # DeepSpeed picks its accelerator at import time; set it from the config, not the host.
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if cfg.scaling.use_gpu else "cpu")

    import deepspeed
    import ray.train
    from transformers.integrations import HfDeepSpeedConfig

    from rerank_ray.losses import build_loss
    from rerank_ray.models import build_model
    from rerank_ray.train.deepspeed import deepspeed_config

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    _seed_everything(cfg.train.seed)
    if not cfg.scaling.use_gpu:
        # Ray gives a worker OMP_NUM_THREADS = its CPU count; make torch use what it was given.
        torch.set_num_threads(max(1, int(cfg.scaling.cpus_per_worker)))

    # Ray Train already built the torch process group; DeepSpeed's comm layer wraps it.
    deepspeed.init_distributed(dist_backend="nccl" if cfg.scaling.use_gpu else "gloo")
    ds_config = deepspeed_config(cfg, total_steps=plan["total_steps"], world_size=world)
    # Keep this object alive while the model is built: transformers then partitions weights at
    # load time under ZeRO-3 (zero.Init), so no worker materialises the whole model.
    hf_ds = HfDeepSpeedConfig(ds_config) if cfg.deepspeed.zero_stage == 3 else None
    # bf16 (GPU) casting is DeepSpeed's job, from ds_config["bf16"].
    model = build_model(cfg.model)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=_param_groups(model, cfg.train.weight_decay),
        config=ds_config,
    )
    if world == 1 and cfg.deepspeed.zero_stage == 0:
        # One replica: the gradient all-reduce DeepSpeed runs after each backward (flatten,
        # gloo/NCCL all-reduce, unflatten) is an identity that costs a full copy of the
        # gradients. ZeRO >= 1 must keep it: its optimizer gathers gradients there.
        engine.enable_backward_allreduce = False
    reranker = engine.module
    loss_fn = build_loss(cfg.loss)
    group_size = cfg.groups.group_size
    B, accum = cfg.train.micro_batch_groups, cfg.train.grad_accum

    state = {"epoch": 0, "step": 0, "batches_in_epoch": 0}
    history: list[dict[str, Any]] = []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            if not (Path(d) / STATE_FILE).exists():
                raise RuntimeError(
                    f"the run's latest checkpoint ({checkpoint.path}) is a finished run's export, "
                    "not a training state: this exact run already finished; use its model/, or "
                    "delete the run's Ray storage to train it again"
                )
            engine.load_checkpoint(d, tag=CKPT_TAG)
            state = json.loads((Path(d) / STATE_FILE).read_text())
            history = state.pop("history", [])
    first_attempt = checkpoint is None

    shard = ray.train.get_dataset_shard("train")
    window = {"loss": 0.0, "n": 0, "pairs": 0, "tokens": 0, "t0": time.perf_counter()}
    t_start = time.perf_counter()

    def report(extra_checkpoint: bool) -> None:
        """Report the metrics of the window since the last report (every rank calls this)."""
        loss = torch.tensor([window["loss"], float(window["n"])], dtype=torch.float64)
        if world > 1:
            torch.distributed.all_reduce(loss)
        if loss[1] > 0:
            elapsed = max(time.perf_counter() - window["t0"], 1e-9)
            history.append(
                {
                    "loss": float(loss[0] / loss[1]),
                    "lr": float(engine.get_lr()[0]),
                    "pairs_per_s": window["pairs"] * world / elapsed,
                    "tokens_per_s": window["tokens"] * world / elapsed,
                    "epoch": state["epoch"],
                    "step": state["step"],
                    "wall_s": time.perf_counter() - t_start,
                }
            )
        metrics = {**(history[-1] if history else {}), "epoch": state["epoch"], "step": state["step"]}
        window.update(loss=0.0, n=0, pairs=0, tokens=0, t0=time.perf_counter())
        if not extra_checkpoint:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as tmp:
            engine.save_checkpoint(tmp, tag=CKPT_TAG)
            if rank == 0:
                (Path(tmp) / STATE_FILE).write_text(json.dumps({**state, "history": history}))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))

    done = False
    while state["epoch"] < cfg.train.epochs and not done:
        skip = state["batches_in_epoch"]
        batches = shard.iter_batches(
            batch_size=B,
            batch_format="numpy",
            drop_last=True,
            local_shuffle_buffer_size=max(4 * B, 64),
            local_shuffle_seed=cfg.train.seed * 1000 + state["epoch"],
        )
        for i, batch in enumerate(batches):
            if i < skip:
                continue  # consumed before the restart
            queries = [q for q in batch["query"] for _ in range(group_size)]
            docs = [str(d) for group in batch["docs"] for d in group]
            if len(docs) != B * group_size:
                raise ValueError(
                    f"a batch holds {len(docs)} documents, expected {B} groups x group_size "
                    f"{group_size}; the groups file was built with another groups.group_size"
                )
            inputs = reranker.tokenize(queries, docs)
            inputs = {k: v.to(engine.device) for k, v in inputs.items()}
            scores = engine(**inputs).float().view(B, group_size)
            teacher = None
            if cfg.loss.needs_teacher:
                teacher = torch.tensor(np.stack(batch["teacher_scores"]), dtype=torch.float32)
                teacher = teacher.to(scores.device)
            loss = loss_fn(scores, teacher)
            engine.backward(loss)
            engine.step()
            state["batches_in_epoch"] += 1
            window["loss"] += float(loss.detach())
            window["n"] += 1
            window["pairs"] += B * group_size
            window["tokens"] += int(inputs["attention_mask"].sum())
            if state["batches_in_epoch"] % accum:
                continue
            state["step"] += 1
            if first_attempt and cfg.train.inject_failure_at_step == state["step"] and rank == 0:
                raise InjectedFailure(
                    f"injected failure at step {state['step']} (train.inject_failure_at_step)"
                )
            every = cfg.train.checkpoint_every_steps
            if every and state["step"] % every == 0:
                report(extra_checkpoint=True)
            elif state["step"] % cfg.train.log_every_steps == 0:
                report(extra_checkpoint=False)
            if state["step"] >= plan["total_steps"]:
                done = True
                break
        state["epoch"] += 1
        state["batches_in_epoch"] = 0
        if not done and state["epoch"] < cfg.train.epochs:
            report(extra_checkpoint=True)

    if window["n"]:
        report(extra_checkpoint=False)
    _export(engine, reranker, cfg, rank, history)
    del hf_ds


def _export(engine: Any, reranker: Any, cfg: Any, rank: int, history: list[dict[str, Any]]) -> None:
    """Write the final Hugging Face model and report it as the run's last checkpoint."""
    import ray.train

    with tempfile.TemporaryDirectory() as tmp:
        state_dict = None
        if cfg.deepspeed.zero_stage == 3:
            # Every rank takes part in gathering the partitioned weights; rank 0 receives them.
            engine.save_16bit_model(tmp, "consolidated.bin")
            if rank == 0:
                state_dict = torch.load(Path(tmp) / "consolidated.bin", map_location="cpu")
                os.remove(Path(tmp) / "consolidated.bin")
        if rank == 0:
            hf_dir = Path(tmp) / "hf"
            reranker.save(hf_dir, state_dict=state_dict)
            (Path(tmp) / "history.json").write_text(json.dumps(history))
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp, exist_ok=True)
            checkpoint = None
        final = history[-1] if history else {}
        ray.train.report({**final, "final": 1}, checkpoint=checkpoint)
