"""The per-worker training loop: one DeepSpeed engine per Ray Train worker.

The worker rebuilds everything from the plain dict it is given (``{"run": RunConfig dict,
"plan": {...}}``); nothing else crosses from the driver.

Per micro-step a worker takes ``micro_batch_groups`` groups from its Ray Data shard (columns
``query``, ``docs`` (positive first), and ``teacher_scores`` for distillation-type losses),
flattens them into ``groups x group_size`` (query, document) pairs, scores them, reshapes the
scores to ``[groups, group_size]`` and hands them to the loss. DeepSpeed does gradient
accumulation, clipping, the optimizer and the LR schedule (see ``train/deepspeed.py``).

Checkpoints (DeepSpeed's sharded engine state + ``train_state.json``) are reported through
``ray.train.report`` at the end of each epoch, every ``checkpoint_every_steps`` and after every
``checkpoint_every_minutes`` of training (rank 0's clock, broadcast so that every rank saves at
the same step); Ray merges the ranks' files into one directory. Each record says how many
checkpoints were taken and how long they took (``checkpoints``, ``checkpoint_s``): what the
fault tolerance costs. A restarted attempt (Ray Train's ``FailureConfig``, or a Tune retry of the
trial on another node) loads the latest one and skips the batches already consumed in that
epoch, so the data order is the same as in an uninterrupted run; its records carry
``resumed_from_step``. The last report carries only the exported Hugging Face model
(``hf/``) and ``history.json``.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rerank_ray.io import write_json
from rerank_ray.models.precision import training_autocast

CKPT_TAG = "engine"
STATE_FILE = "train_state.json"
# Test-only fault hook: with RERANK_RAY_FAIL_AT_STEP=N in the workers' environment, rank 0 raises
# InjectedFailure once after N optimizer steps, on the first attempt only (a restarted attempt
# has a checkpoint and does not raise). Tests of resume and of failed trials use it; it is not
# a config field, so no user-facing config can switch it on.
FAIL_AT_STEP_ENV = "RERANK_RAY_FAIL_AT_STEP"


class InjectedFailure(RuntimeError):
    """Raised by the RERANK_RAY_FAIL_AT_STEP test hook; not a real error."""


def injected_failure_step() -> int | None:
    """The step at which the test hook fails the run, None when the hook is off."""
    value = os.environ.get(FAIL_AT_STEP_ENV, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{FAIL_AT_STEP_ENV}={value!r}: expected a step number >= 1 (test-only hook)")
    return int(value)


def train_step(engine: Any, loss_fn: Any, batch: dict[str, Any], cfg: Any) -> tuple[float, int, int]:
    """One micro-step on `batch` (``micro_batch_groups`` groups): score its
    ``groups x group_size`` pairs, take the loss, backward, and let DeepSpeed step (it applies
    the update only at the end of each accumulation window). Returns (loss, pairs, tokens).

    The model is put in training mode first: ``from_pretrained`` returns a model in eval mode
    and DeepSpeed does not change it, so without this dropout would be off."""
    engine.train()
    reranker = engine.module
    B, group_size = cfg.train.micro_batch_groups, cfg.groups.group_size
    queries = [q for q in batch["query"] for _ in range(group_size)]
    docs = [str(d) for group in batch["docs"] for d in group]
    if len(docs) != B * group_size:
        raise ValueError(
            f"a batch holds {len(docs)} documents, expected {B} groups x group_size "
            f"{group_size}; the groups file was built with another groups.group_size"
        )
    inputs = reranker.tokenize(queries, docs)
    inputs = {k: v.to(engine.device) for k, v in inputs.items()}
    with training_autocast(cfg.model.autocast, engine.device):  # bf16 matmuls with model.autocast: bf16
        scores = engine(**inputs).float().view(B, group_size)
    teacher = None
    if cfg.loss.needs_teacher:
        teacher = torch.tensor(np.stack(batch["teacher_scores"]), dtype=torch.float32).to(scores.device)
    loss = loss_fn(scores, teacher)
    engine.backward(loss)
    engine.step()
    return float(loss.detach()), B * group_size, int(inputs["attention_mask"].sum())


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


@dataclass
class LoopState:
    """A worker's position in training, saved with every checkpoint (``train_state.json``)."""

    epoch: int = 0
    step: int = 0  # optimizer steps taken
    batches_in_epoch: int = 0  # micro-batches consumed in the current epoch
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per report
    checkpoints: int = 0  # checkpoints saved (before the one this state is saved in)
    checkpoint_s: float = 0.0  # seconds spent saving and reporting them
    resumed_from_step: int | None = None  # the step of the checkpoint this attempt restarted from

    def count_batch(self, accum: int) -> bool:
        """Count one micro-batch; True when it completed an optimizer step (every `accum`)."""
        self.batches_in_epoch += 1
        if self.batches_in_epoch % accum:
            return False
        self.step += 1
        return True

    def next_epoch(self) -> None:
        self.epoch += 1
        self.batches_in_epoch = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LoopState:
        return cls(**data)


@dataclass
class MetricWindow:
    """Loss and throughput of this worker since the last report."""

    loss: float = 0.0  # summed over micro-batches
    n: int = 0  # micro-batches
    pairs: int = 0
    tokens: int = 0
    t0: float = field(default_factory=time.perf_counter)

    def add(self, loss: float, pairs: int, tokens: int) -> None:
        self.loss += loss
        self.n += 1
        self.pairs += pairs
        self.tokens += tokens

    def flush(self, *, world: int, lr: float, state: LoopState, t_start: float) -> dict[str, Any] | None:
        """The window's record, then an empty window; None when no micro-batch ran in it.

        The loss is the mean over every rank's micro-batches (an all-reduce when world > 1, so
        every rank must call this); throughput assumes all ranks ran as fast as this one."""
        totals = torch.tensor([self.loss, float(self.n)], dtype=torch.float64)
        if world > 1:
            torch.distributed.all_reduce(totals)
        record = None
        if totals[1] > 0:
            elapsed = max(time.perf_counter() - self.t0, 1e-9)
            record = {
                "loss": float(totals[0] / totals[1]),
                "lr": lr,
                "pairs_per_s": self.pairs * world / elapsed,
                "tokens_per_s": self.tokens * world / elapsed,
                "epoch": state.epoch,
                "step": state.step,
                "wall_s": time.perf_counter() - t_start,
                "checkpoints": state.checkpoints,
                "checkpoint_s": state.checkpoint_s,
            }
            if state.resumed_from_step is not None:
                record["resumed_from_step"] = state.resumed_from_step
        self.loss, self.n, self.pairs, self.tokens, self.t0 = 0.0, 0, 0, 0, time.perf_counter()
        return record


@dataclass
class CheckpointClock:
    """Training time since the last checkpoint, for ``checkpoint_every_minutes``. Rank 0's
    clock decides and the decision is broadcast, so every rank saves at the same step (DeepSpeed's
    save is collective)."""

    minutes: float | None
    last: float = field(default_factory=time.perf_counter)

    def due(self, world: int, device: Any) -> bool:
        if not self.minutes:
            return False
        flag = torch.tensor([float(time.perf_counter() - self.last >= 60 * self.minutes)], device=device)
        if world > 1:
            torch.distributed.broadcast(flag, src=0)
        return bool(flag.item())

    def reset(self) -> None:
        self.last = time.perf_counter()


def report_due(step: int, train: Any, time_due: bool = False) -> str | None:
    """What to report after optimizer step `step`: "checkpoint" (every
    ``checkpoint_every_steps``, or when `time_due`: ``checkpoint_every_minutes`` have passed),
    "metrics" (every ``log_every_steps``) or nothing."""
    every = train.checkpoint_every_steps
    if (every and step % every == 0) or time_due:
        return "checkpoint"
    if step % train.log_every_steps == 0:
        return "metrics"
    return None


def epoch_batches(shard: Any, cfg: Any, state: LoopState) -> Iterator[dict[str, Any]]:
    """The micro-batches of epoch `state.epoch` in their seeded order, without the
    `state.batches_in_epoch` consumed before a restart, so a resumed run sees the same data
    order as an uninterrupted one."""
    B = cfg.train.micro_batch_groups
    batches = shard.iter_batches(
        batch_size=B,
        batch_format="numpy",
        drop_last=True,
        local_shuffle_buffer_size=max(4 * B, 64),
        local_shuffle_seed=cfg.train.seed * 1000 + state.epoch,
    )
    return itertools.islice(batches, state.batches_in_epoch, None)


def restore(engine: Any, checkpoint: Any) -> LoopState:
    """The state of the run's latest checkpoint (loaded into `engine`), or a fresh one."""
    if checkpoint is None:
        return LoopState()
    with checkpoint.as_directory() as d:
        if not (Path(d) / STATE_FILE).exists():
            raise RuntimeError(
                f"the run's latest checkpoint ({checkpoint.path}) is a finished run's export, "
                "not a training state: this exact run already finished; use its model/, or "
                "delete the run's Ray storage to train it again"
            )
        engine.load_checkpoint(d, tag=CKPT_TAG)
        state = LoopState.from_json(json.loads((Path(d) / STATE_FILE).read_text()))
    state.resumed_from_step = state.step
    return state


def report(
    engine: Any,
    state: LoopState,
    window: MetricWindow,
    *,
    rank: int,
    world: int,
    t_start: float,
    checkpoint: bool,
    clock: CheckpointClock | None = None,
) -> None:
    """Report the window's metrics to Ray Train (every rank calls this), with a checkpoint of
    the engine and `state` when `checkpoint` (which restarts `clock`)."""
    import ray.train

    record = window.flush(world=world, lr=float(engine.get_lr()[0]), state=state, t_start=t_start)
    if record is not None:
        state.history.append(record)
    metrics = {**(state.history[-1] if state.history else {}), "epoch": state.epoch, "step": state.step}
    if not checkpoint:
        ray.train.report(metrics)
        return
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        engine.save_checkpoint(tmp, tag=CKPT_TAG)
        if rank == 0:
            write_json(Path(tmp) / STATE_FILE, state.to_json(), indent=None)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
    state.checkpoints += 1
    state.checkpoint_s += time.perf_counter() - t0
    if clock is not None:
        clock.reset()


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train's per-worker function: setup, restore, then per epoch the batches, each a
    training step, with reports and checkpoints; finally the export (see the module docstring)."""
    from rerank_ray.config import RunConfig

    cfg = RunConfig.from_dict(config["run"])
    check_run_folder(cfg)
    total_steps = config["plan"]["total_steps"]
    # DeepSpeed picks its accelerator at import time; set it from the config, not the host.
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if cfg.scaling.use_gpu else "cpu")

    import ray.train

    from rerank_ray.losses import build_loss

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    # setup: seeds, threads, and the DeepSpeed engine around the model the config describes
    engine, hf_ds = _setup(cfg, total_steps, world)
    loss_fn = build_loss(cfg.loss)
    # restore: the latest checkpoint, when Ray Train restarted this run after a failure
    checkpoint = ray.train.get_checkpoint()
    state = restore(engine, checkpoint)
    fail_at = injected_failure_step() if checkpoint is None else None
    shard = ray.train.get_dataset_shard("train")
    window, t_start, clock = (
        MetricWindow(),
        time.perf_counter(),
        CheckpointClock(cfg.train.checkpoint_every_minutes),
    )
    reporting = {"rank": rank, "world": world, "t_start": t_start, "clock": clock}
    done = False
    while state.epoch < cfg.train.epochs and not done:
        # batches: this epoch's seeded order, minus those consumed before a restart
        for batch in epoch_batches(shard, cfg, state):
            # forward, loss, backward, step (DeepSpeed updates once per accumulation window)
            window.add(*train_step(engine, loss_fn, batch, cfg))
            if not state.count_batch(cfg.train.grad_accum):
                continue
            if fail_at == state.step and rank == 0:
                raise InjectedFailure(f"injected failure at step {state.step} ({FAIL_AT_STEP_ENV})")
            # report: metrics every log_every_steps, a checkpoint every checkpoint_every_steps/_minutes
            due = report_due(state.step, cfg.train, clock.due(world, engine.device))
            if due:
                report(engine, state, window, checkpoint=due == "checkpoint", **reporting)
            if state.step >= total_steps:
                done = True
                break
        # checkpoint: at the end of every epoch but the last
        state.next_epoch()
        if not done and state.epoch < cfg.train.epochs:
            report(engine, state, window, checkpoint=True, **reporting)
    # export: the last window's metrics, then the Hugging Face model as the final checkpoint
    if window.n:
        report(engine, state, window, checkpoint=False, **reporting)
    _export(engine, engine.module, cfg, rank, state.history)
    del hf_ds


def check_run_folder(cfg: Any) -> None:
    """Fail at once, before training, on a node that cannot see the run's folder: its
    checkpoints go there (``<run_dir>/ray``), and the driver exports the model from them. A
    cloud ``train.storage_path`` (``s3://``) needs no shared folder."""
    from rerank_ray.cluster import FIX, StorageError

    storage = cfg.train.storage_path
    if (storage is None or "://" not in storage) and not cfg.run_dir.is_dir():
        raise StorageError(
            f"Ray Train worker on node {socket.gethostname()}: the run folder {cfg.run_dir} does not "
            f"exist there, so its checkpoints would be lost with the node; {FIX}"
        )


def _setup(cfg: Any, total_steps: int, world: int) -> tuple[Any, Any]:
    """Seed, size torch's thread pool, build the model and wrap it in a DeepSpeed engine.

    Returns (engine, hf_ds): keep hf_ds alive until the end of training; under ZeRO-3 it makes
    transformers partition weights at load time (zero.Init), so no worker materialises the
    whole model."""
    import deepspeed
    from transformers.integrations import HfDeepSpeedConfig

    from rerank_ray.models import build_model
    from rerank_ray.train.deepspeed import deepspeed_config, lr_schedule

    _seed_everything(cfg.train.seed)
    if not cfg.scaling.use_gpu:
        # Ray gives a worker OMP_NUM_THREADS = its CPU count; make torch use what it was given.
        torch.set_num_threads(max(1, int(cfg.scaling.cpus_per_worker)))
    # Ray Train already built the torch process group; DeepSpeed's comm layer wraps it.
    deepspeed.init_distributed(dist_backend="nccl" if cfg.scaling.use_gpu else "gloo")
    ds_config = deepspeed_config(cfg, world_size=world)
    hf_ds = HfDeepSpeedConfig(ds_config) if cfg.deepspeed.zero_stage == 3 else None
    # bf16 (GPU) casting is DeepSpeed's job, from ds_config["bf16"].
    model = build_model(cfg.model)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=_param_groups(model, cfg.train.weight_decay),
        lr_scheduler=lr_schedule(cfg, total_steps=total_steps),
        config=ds_config,
    )
    if world == 1 and cfg.deepspeed.zero_stage == 0:
        # One replica: the gradient all-reduce DeepSpeed runs after each backward (flatten,
        # gloo/NCCL all-reduce, unflatten) is an identity that costs a full copy of the
        # gradients. ZeRO >= 1 must keep it: its optimizer gathers gradients there.
        engine.enable_backward_allreduce = False
    return engine, hf_ds


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
            write_json(Path(tmp) / "history.json", history, indent=None)
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp, exist_ok=True)
            checkpoint = None
        final = history[-1] if history else {}
        ray.train.report({**final, "final": 1}, checkpoint=checkpoint)
