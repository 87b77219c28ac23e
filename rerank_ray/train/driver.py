"""The driver side of training: groups -> Ray Dataset -> ``TorchTrainer`` -> exported model.

``train(cfg)`` is the library function behind ``rerank-ray train`` and every study trial:

1. build (or reuse) the training groups (``data/groups.py``);
2. make the training dataset from the groups file (:func:`training_inputs`, ``data/shards.py``)
   in a Ray task, aligning the teacher scores with the groups for distillation-type losses; a
   missing pair stops training with a count of the missing pairs; the groups and scores never
   pass through this process, which reads only the file's row count;
3. order the groups once with ``train.seed`` and hand them to Ray Train as the ``train``
   dataset, which Ray Data splits into equal shards, one per worker;
4. run ``train_loop_per_worker`` on ``scaling.num_workers`` workers with DeepSpeed;
5. copy the exported Hugging Face model out of the final checkpoint into
   ``<output_dir>/<name>/model``.

Output layout under ``<output_dir>/<name>/``: ``groups/`` (Parquet + stats), ``ray/``
(Ray Train's run storage: checkpoints, unless ``train.storage_path`` or the
``storage_path`` argument names shared storage, as a multi-node cluster needs), ``model/`` (HF format,
loadable by ``rerank_ray.models.load_reranker``), ``history.json`` (every metric report),
``run.json`` (the run's one finished record, ``train/record.py``, which a study trial extends
with its evaluation; it holds the content identity, ``train/identity.py``: a finished run whose
config, groups content, teacher scores and base weights all match is reused, not retrained; the
log names the inputs that changed otherwise). The Ray run is named ``<name>-<fingerprint>``, so a
restarted identical run resumes from its checkpoints, while a run with any changed input starts fresh.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rerank_ray.config import ConfigError, RunConfig
from rerank_ray.io import atomic_dir, tree_size, write_json
from rerank_ray.train import record as run_record
from rerank_ray.train.identity import RunIdentity, run_identity

log = logging.getLogger("rerank_ray.train")

RECORD = run_record.RECORD


@dataclass(frozen=True)
class TrainResult:
    model_dir: Path
    groups_path: Path
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0
    identity: RunIdentity | None = None
    reused: bool = False


def optimizer_steps(cfg: RunConfig, n_groups: int) -> tuple[int, int]:
    """(optimizer steps per epoch, in total) that ``train_loop_per_worker`` takes on `n_groups`
    groups; the one count of them (``plan_steps`` and the dry run's forecast both use it).

    Ray Train splits the dataset into equal shards, one per worker (``streaming_split(world,
    equal=True)``: the ``n_groups % workers`` left over are dropped); each worker cuts its shard
    into micro-batches of ``train.micro_batch_groups`` with ``drop_last=True`` and counts a step
    every ``train.grad_accum`` micro-batches of an epoch (a window left partial at the end of an
    epoch is no step); ``train.max_steps`` caps the total. Every division rounds down."""
    per_worker = n_groups // cfg.scaling.num_workers
    steps_per_epoch = per_worker // cfg.train.micro_batch_groups // cfg.train.grad_accum
    total = steps_per_epoch * cfg.train.epochs
    if cfg.train.max_steps is not None:
        total = min(total, cfg.train.max_steps)
    return steps_per_epoch, total


def plan_steps(cfg: RunConfig, n_groups: int) -> dict[str, int]:
    """Optimizer steps per epoch and in total (:func:`optimizer_steps`); fewer groups than one
    step needs are a ConfigError."""
    world = cfg.scaling.num_workers
    steps_per_epoch, total = optimizer_steps(cfg, n_groups)
    if steps_per_epoch < 1:
        raise ConfigError(
            f"{n_groups} groups are too few for {world} workers x train.micro_batch_groups="
            f"{cfg.train.micro_batch_groups} x train.grad_accum={cfg.train.grad_accum}: "
            "not one optimizer step per epoch; build more groups or lower those values"
        )
    return {"steps_per_epoch": steps_per_epoch, "total_steps": total, "n_groups": n_groups}


def reusable_run(run_dir: Path, identity: RunIdentity, what: str) -> dict[str, Any] | None:
    """The training part (``{"metrics", "wall_s"}``) of the finished run's record in `run_dir`
    (``train/record.py``) when it was trained on exactly `identity`'s inputs, else None (after
    logging which input changed)."""
    done = run_record.read_record(run_dir)
    if done is None or "train" not in done or not (run_dir / "model").is_dir():
        return None
    return (
        done["train"]
        if same_inputs(RunIdentity.from_json(done.get("identity")), identity, what, run_dir)
        else None
    )


def same_inputs(stored: RunIdentity | None, identity: RunIdentity, what: str, where: Path) -> bool:
    """Whether a finished run (`stored`) had `identity`'s inputs; logs the decision either way."""
    if stored is None:
        log.info("%s: training again, the run in %s records no input identity", what, where)
        return False
    changed = identity.changes(stored)
    if changed:
        log.info("%s: training again, its %s changed since the run in %s", what, " and ".join(changed), where)
        return False
    log.info(
        "%s: reusing the finished run in %s (same config, groups, teacher scores, base weights)", what, where
    )
    return True


def _test_hooks() -> dict[str, Any] | None:
    """Forward the loop's test-only fault hook (``RERANK_RAY_FAIL_AT_STEP``) from this process
    to the workers, whose environment is the Ray cluster's, not ours."""
    from rerank_ray.train.loop import FAIL_AT_STEP_ENV

    value = os.environ.get(FAIL_AT_STEP_ENV)
    return {"env_vars": {FAIL_AT_STEP_ENV: value}} if value else None


def training_inputs(cfg: RunConfig, groups_path: Path) -> Any:
    """The trainer's ``train`` dataset (``data/shards.training_dataset``): the groups file and,
    when the loss needs them, the teacher scores, made into a Ray Dataset in the run's seeded order
    (one shuffle with ``train.seed``, so shards mix queries; per-epoch order comes from the
    loop's local shuffle). Ray must be started."""
    from rerank_ray.data.shards import training_dataset

    return training_dataset(groups_path, seed=cfg.train.seed, teacher_scores=_teacher_scores(cfg))


def _teacher_scores(cfg: RunConfig) -> str | None:
    """The teacher-scores file the loss needs, or None for a loss without a teacher."""
    if not cfg.loss.needs_teacher:
        return None
    if cfg.train.teacher_scores is None:
        raise ConfigError(
            f"loss.name={cfg.loss.name!r} needs teacher scores: set train.teacher_scores to a "
            "Parquet file of (query_id, doc_id, score), e.g. from `rerank-ray score`"
        )
    return str(cfg.train.teacher_scores)


def train(
    cfg: RunConfig,
    *,
    groups_path: Path | None = None,
    storage_path: str | Path | None = None,
    identity: RunIdentity | None = None,
) -> TrainResult:
    """Train `cfg` with Ray Train (the module docstring's steps 1-5) and export the model; a
    finished run in ``cfg.run_dir`` with the same inputs is returned as it is (``reused``).
    `groups_path`: groups built already (a study's); `storage_path`: Ray Train's storage;
    `identity`: the run's identity when the caller computed it already (a study trial)."""
    from rerank_ray.data.groups import build_groups
    from rerank_ray.data.shards import count_groups_in
    from rerank_ray.heartbeat import heartbeat
    from rerank_ray.ray_runtime import local_train_cpus, run_need, start_ray

    t0 = time.perf_counter()
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)  # each Train worker checks that it sees it
    groups_path = Path(groups_path or build_groups(cfg, run_dir / "groups").path)
    identity = identity or run_identity(cfg, groups_path)
    done = reusable_run(run_dir, identity, f"training {cfg.name}")
    if done is not None:
        return TrainResult(
            model_dir=run_dir / "model",
            groups_path=groups_path,
            metrics=done["metrics"],
            history=json.loads((run_dir / "history.json").read_text()),
            wall_s=done["wall_s"],
            identity=identity,
            reused=True,
        )
    _teacher_scores(cfg)  # a missing setting fails before Ray starts
    plan = plan_steps(cfg, count_groups_in(groups_path))
    log.info(
        "training %s (%s, %s loss) on %d groups: %d steps on %d worker(s), ZeRO-%d",
        cfg.name, cfg.model.source, cfg.loss.name, plan["n_groups"], plan["total_steps"],
        cfg.scaling.num_workers, cfg.deepspeed.zero_stage,
    )  # fmt: skip
    start_ray(num_cpus=local_train_cpus(cfg), needs=[run_need(cfg, f"training {cfg.name}")])
    storage = storage_path or cfg.train.storage_path or run_dir / "ray"
    trainer = _trainer(cfg, training_inputs(cfg, groups_path), plan, identity, storage)
    with heartbeat(f"training {cfg.name}", waiting_on=f"Ray Train workers (`ray status`; logs in {storage})"):
        result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training {cfg.name} finished without a final checkpoint; see {storage}")
    model_dir, history = _export(result.checkpoint, run_dir)
    metrics = {k: v for k, v in (result.metrics or {}).items() if k != "final"}
    wall_s = time.perf_counter() - t0
    run_record.write_train_record(run_dir, identity.to_json(), metrics, wall_s)
    return TrainResult(
        model_dir=model_dir,
        groups_path=groups_path,
        metrics=metrics,
        history=history,
        wall_s=wall_s,
        identity=identity,
    )


def _trainer(
    cfg: RunConfig, dataset: Any, plan: dict[str, int], identity: RunIdentity, storage: str | Path
) -> Any:
    """The ``TorchTrainer`` of `cfg`: ``train_loop_per_worker`` given only the config dict and
    the step plan, `dataset` (:func:`training_inputs`) as its ``train`` dataset, checkpoints
    under `storage` in a Ray run named ``<name>-<fingerprint>`` (so only an identical run
    resumes from them)."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from rerank_ray.train.loop import train_loop_per_worker

    resources = {"CPU": cfg.scaling.cpus_per_worker}
    if cfg.scaling.use_gpu:
        resources["GPU"] = cfg.scaling.gpus_per_worker
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"run": cfg.to_dict(), "plan": plan},
        torch_config=TorchConfig(backend="nccl" if cfg.scaling.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.scaling.num_workers,
            use_gpu=cfg.scaling.use_gpu,
            resources_per_worker=resources,
        ),
        run_config=ray.train.RunConfig(
            name=f"{cfg.name}-{identity.fingerprint}",
            storage_path=str(storage),
            failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures),
            # The latest two: a restart needs only the last, and periodic checkpoints of a long
            # run on shared storage (EFS bills by the GB-month) would otherwise pile up.
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            worker_runtime_env=_test_hooks(),
        ),
        datasets={"train": dataset},
    )


def _export(checkpoint: Any, run_dir: Path) -> tuple[Path, list[dict[str, Any]]]:
    """Copy the final checkpoint's Hugging Face model to ``<run_dir>/model`` (replacing an old
    one) and its metric history to ``<run_dir>/history.json``; returns both.

    The model is copied into a hidden temporary folder and renamed into place
    (``rerank_ray.io.atomic_dir``), so a copy that fails (a full disk) leaves the old run as it
    was; ``run.json``, the old run's finished record, is removed just before the new model
    replaces the old one, so a run is never marked finished by another run's record."""
    model_dir = run_dir / "model"
    with checkpoint.as_directory() as d:
        history = json.loads((Path(d) / "history.json").read_text())
        with atomic_dir(model_dir, needed=tree_size(Path(d) / "hf")) as tmp:
            shutil.copytree(Path(d) / "hf", tmp, dirs_exist_ok=True)
            run_record.forget(run_dir)
    write_json(run_dir / "history.json", history, indent=1)
    return model_dir, history
