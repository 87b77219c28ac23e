"""The one way the project gets a Ray: ``start_ray``, used by ``train`` and ``study``.

- ``$RAY_ADDRESS`` set: connect to that cluster, never passing ``num_cpus``/``num_gpus`` (Ray
  refuses them for an existing cluster: the cluster decides its resources).
- Not set: start a private local instance (``address="local"``), and log it. A plain
  ``ray.init()`` would silently join a ``ray start --head`` already running on the machine.

Then, before any trial or worker is started, every :class:`Need` (what one trial, or one
training run, holds at once) is checked against what the cluster has, or can add: the alive
nodes, plus for an autoscaling cluster each node type at its ``max_workers``. A need that can
never be met fails at once with the numbers, instead of waiting forever for resources.

Start-up on a local machine also checks DeepSpeed's CPU communication op (``start_ray`` loads
it before any worker does; see ``prebuild_comm_op``), because a compile interrupted earlier
leaves a lock file that makes every later worker wait forever, silently.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from rerank_ray.stopping import reclaim_sigterm

if TYPE_CHECKING:
    from rerank_ray.config import RunConfig
    from rerank_ray.teacher.config import ScoringConfig

log = logging.getLogger("rerank_ray.ray")

# The cluster launcher's copy of cluster.yaml on the head (`ray start --autoscaling-config`).
BOOTSTRAP_CONFIG = Path("~/ray_bootstrap_config.yaml")
# A torch-extensions lock older than this is left by a killed compile (a compile takes well under it).
STALE_LOCK_S = 600.0


class ResourceError(RuntimeError):
    """The cluster cannot provide what a trial or training run needs at once."""


class StaleBuildLock(RuntimeError):
    """A torch-extensions build lock left behind by a killed compile."""


@dataclass(frozen=True)
class Need:
    """What one unit of work (a trial with its training workers) holds at the same time.

    Each bundle (one process: a Tune trial, a Train worker) must fit on one node; together they
    must fit in the cluster. Keys are Ray resource names (``CPU``, ``GPU``)."""

    what: str
    bundles: tuple[dict[str, float], ...]

    def total(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for bundle in self.bundles:
            for key, value in bundle.items():
                out[key] = out.get(key, 0.0) + value
        return out


@dataclass(frozen=True)
class Capacity:
    """The most a cluster can offer: totals, and each node (or node type) it has or can add."""

    total: dict[str, float]
    nodes: tuple[dict[str, float], ...]
    source: str


def check_fits(need: Need, capacity: Capacity) -> None:
    """Raise ResourceError, with the numbers and the settings to change, when `need` can never
    be scheduled on `capacity`."""
    total = need.total()
    short = {k: v for k, v in total.items() if v > capacity.total.get(k, 0.0) + 1e-9}
    if short:
        have = ", ".join(f"{k} {capacity.total.get(k, 0.0):g}" for k in short)
        want = ", ".join(f"{k} {v:g}" for k, v in short.items())
        raise ResourceError(
            f"{need.what} needs {want} at once ({_bundles(need)}), but {capacity.source} has "
            f"{have}; lower tune.cpus_per_trial / scaling.num_workers / scaling.cpus_per_worker, "
            "set scaling.use_gpu=false on a machine without GPUs, or raise tune.num_cpus"
        )
    for bundle in need.bundles:
        if not any(all(node.get(k, 0.0) + 1e-9 >= v for k, v in bundle.items()) for node in capacity.nodes):
            biggest = ", ".join(_fmt(node) for node in capacity.nodes) or "no nodes"
            raise ResourceError(
                f"{need.what}: one process needs {_fmt(bundle)} on a single node, but the nodes "
                f"of {capacity.source} offer at most: {biggest}; lower scaling.cpus_per_worker / "
                "scaling.gpus_per_worker or tune.cpus_per_trial / tune.gpus_per_trial"
            )


def _fmt(resources: dict[str, float]) -> str:
    return " + ".join(f"{k} {v:g}" for k, v in sorted(resources.items()) if k in ("CPU", "GPU")) or "nothing"


def _bundles(need: Need) -> str:
    return ", ".join(_fmt(b) for b in need.bundles)


def start_ray(
    *, num_cpus: int | None = None, num_gpus: int | None = None, needs: Sequence[Need] = ()
) -> None:
    """Connect to ``$RAY_ADDRESS`` or start a private local Ray, then check `needs` fit.

    `num_cpus`/`num_gpus` size only a local instance (None: Ray detects the machine's). A Ray
    already initialized in this process (a test fixture, a Tune trial) is used as it is."""
    import ray

    if ray.is_initialized():
        return
    from rerank_ray.console import ray_to_console, route_library_logs

    address = os.environ.get("RAY_ADDRESS")
    # Workers' output (Train's per-step records, Tune's trial logs) stays in Ray's session logs
    # unless `-v`: the console shows the study's own lines (docs/CLI.md).
    quiet = {} if ray_to_console() else {"log_to_driver": False}
    route_library_logs()  # Ray's start-up line too
    if address:
        ray.init(**quiet)
        log.info("connected to the Ray cluster at RAY_ADDRESS=%s", address)
    else:
        prebuild_comm_op()
        ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, **quiet)
        log.info(
            "started a private local Ray (%s); set RAY_ADDRESS to use a running cluster instead",
            _fmt(ray.cluster_resources()),
        )
    if not ray_to_console():
        import ray.data

        ray.data.DataContext.get_current().enable_progress_bars = False
    route_library_logs()
    reclaim_sigterm()  # ray.init made SIGTERM a plain sys.exit; a stopped study must unwind as one
    node_types = autoscaler_node_types() if address else []
    capacity = cluster_capacity(node_types)
    try:
        for need in needs:
            check_fits(need, capacity)
    except ResourceError as e:
        if node_types is None:
            # A cluster whose autoscaler we cannot read (KubeRay, a manual `ray start`) may still
            # add nodes: say what will wait, rather than refuse work that may be scheduled.
            log.warning("%s; if this cluster cannot add such nodes, the run will wait forever", e)
            return
        ray.shutdown()
        raise


def run_need(run: RunConfig, what: str, trial: dict[str, float] | None = None) -> Need:
    """A training run's workers (``run.scaling``), plus the Tune trial process that starts them."""
    worker = {"CPU": run.scaling.cpus_per_worker}
    if run.scaling.use_gpu:
        worker["GPU"] = run.scaling.gpus_per_worker
    return Need(what, ((trial,) if trial else ()) + (worker,) * run.scaling.num_workers)


def scoring_need(scoring: ScoringConfig, what: str = "teacher scoring") -> Need:
    """A teacher-scoring job's actor pool (``scoring``), all alive at once."""
    actor = {"CPU": scoring.cpus_per_actor}
    if scoring.gpus_per_actor:
        actor["GPU"] = scoring.gpus_per_actor
    return Need(what, (actor,) * scoring.actors)


def local_train_cpus(run: RunConfig) -> int:
    """Logical CPUs for a local Ray that trains `run`: the machine's (or the workers' when
    more), plus two: Ray Data needs a slot to feed the workers, and a run whose workers take
    every CPU waits forever."""
    workers = run.scaling.num_workers * run.scaling.cpus_per_worker
    return int(max(os.cpu_count() or 1, workers)) + 2


def cluster_capacity(node_types: list[tuple[dict[str, float], int]] | None) -> Capacity:
    """What the connected Ray has now, plus what its autoscaler may add (`node_types`:
    resources and max_workers of each worker type; [] when it cannot grow)."""
    import ray

    nodes = [dict(n["Resources"]) for n in ray.nodes() if n["Alive"]]
    total = dict(ray.cluster_resources())
    for resources, max_workers in node_types or []:
        nodes.append(resources)
        for key, value in resources.items():
            total[key] = total.get(key, 0.0) + value * max_workers
    source = (
        "the cluster with its autoscaler's node types at max_workers" if node_types else "the Ray cluster"
    )
    return Capacity(total=total, nodes=tuple(nodes), source=source)


def autoscaler_node_types() -> list[tuple[dict[str, float], int]] | None:
    """(resources, max nodes) of each node type the autoscaler may add; None when unknown.

    First the cluster config the autoscaler reports to the GCS (what Ray Train V2 itself checks
    before placing workers, ``ray._private.state.state.get_cluster_config``), else the
    launcher's config on a `ray up` head. Adding these to the nodes already up over-counts,
    so a need is refused only when it can never fit."""
    from ray._private.state import state

    config = state.get_cluster_config()
    if config is not None and config.node_group_configs:
        return [
            ({k: float(v) for k, v in g.resources.items()}, g.max_count if g.max_count >= 0 else 10**6)
            for g in config.node_group_configs
            if g.max_count != 0
        ]
    return bootstrap_node_types()


def bootstrap_node_types(path: Path = BOOTSTRAP_CONFIG) -> list[tuple[dict[str, float], int]] | None:
    """(resources, max_workers) of each worker node type of a `ray up` cluster, read from the
    launcher's config on the head (resources filled in by the launcher); None when that config
    is not here or names a type without resources (its growth is then unknown)."""
    path = path.expanduser()
    if not path.is_file():
        return None
    config: dict[str, Any] = yaml.safe_load(path.read_text()) or {}
    head = config.get("head_node_type")
    types = [
        ({k: float(v) for k, v in (spec.get("resources") or {}).items()}, int(spec.get("max_workers", 0)))
        for name, spec in (config.get("available_node_types") or {}).items()
        if name != head and spec.get("max_workers", 0) > 0
    ]
    return None if any(not resources for resources, _ in types) else types


# ---------------------------------------------------------------------------------------------
# DeepSpeed's CPU communication op: compiled on first use, under a torch-extensions lock.


def extension_lock(name: str) -> Path:
    """The lock file torch's JIT extension build holds while compiling op `name`."""
    from torch.utils.cpp_extension import _get_build_directory

    return Path(_get_build_directory(name, verbose=False)) / "lock"


def check_extension_lock(name: str, *, max_age_s: float = STALE_LOCK_S) -> None:
    """Fail, naming the path and the fix, when op `name`'s build lock is older than a compile
    takes: a killed compile left it, and every later load would wait on it forever."""
    lock = extension_lock(name)
    if not lock.exists():
        return
    age = time.time() - lock.stat().st_mtime
    if age > max_age_s:
        raise StaleBuildLock(
            f"stale torch-extensions lock {lock} ({age / 60:.0f} min old; compiling {name} takes "
            f"under a minute): an earlier run was killed while compiling it, and every run would "
            f"wait on it forever. Fix: rm {lock}"
        )
    log.info("%s is being compiled by another process (lock %s); waiting for it", name, lock)


def comm_op_builder() -> Any | None:
    """DeepSpeed's shared-memory communication op builder, which every worker's
    ``deepspeed/comm/torch.py::build_shm_op`` loads (compiling it the first time) on the CPU
    accelerator; None elsewhere, or where DeepSpeed itself would skip it (not compatible)."""
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() != "cpu":
        return None
    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is None or not deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
        return None
    return builder


def prebuild_comm_op() -> None:
    """Compile (the first time) or load DeepSpeed's CPU communication op in this process,
    so that no training worker compiles it; `make install` calls this once."""
    from rerank_ray.heartbeat import heartbeat

    builder = comm_op_builder()
    if builder is None:
        return
    check_extension_lock(builder.NAME)
    log.info("loading DeepSpeed's CPU communication op %s (compiled once, on first use)", builder.NAME)
    with heartbeat(
        f"building {builder.NAME}", waiting_on=f"the compiler (lock {extension_lock(builder.NAME)})"
    ):
        builder.load(verbose=False)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    prebuild_comm_op()
