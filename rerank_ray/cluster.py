"""What changes when a run spans nodes: one storage root, a check that proves every node sees
it, and fault-tolerance defaults that let a trial survive a lost node.

**Storage root.** On a multi-node Ray cluster, everything a node other than the driver's reads
or writes (groups, teacher scores, fold teachers, trial folders, Ray Tune's and Ray Train's
storage) must live on storage every node mounts at the same path (Ray's persistent-storage
guide). ``$RERANK_RAY_STORAGE`` names that root (``cluster.yaml`` exports it on every node, over
an EFS mount): a relative ``output_dir`` (the default ``outputs``) is resolved under it instead
of the working directory, which on a `ray job submit` is a temporary folder on the head.

**The check.** :func:`check_nodes` writes a one-time token under the study's folder and reads it
back from a Ray task pinned to every alive node; a node that cannot see it stops the study
before anything trains, with one line naming the node, the path and the fix. A trial started
later on a node the autoscaler added checks the same token (:func:`verify_token`) before it
trains, and each Ray Train worker checks that its run folder is there (``train/loop.py``).

**Fault tolerance.** :func:`on_cluster` is true when ``$RERANK_RAY_STORAGE`` or ``$RAY_ADDRESS``
is set (a study submitted with `ray job submit`, or connected to a running cluster). There the
config's defaults become :data:`CLUSTER_RETRIES` retries in Ray Train and Ray Tune and a
checkpoint every :data:`CLUSTER_CHECKPOINT_MINUTES` minutes of training, so a reclaimed spot node
costs minutes; on one machine they stay off. Explicit values in the YAML always win.

Only the standard library is imported at module level: the check's task imports this module on
every node, and it must answer in seconds.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("rerank_ray.cluster")

STORAGE_ENV = "RERANK_RAY_STORAGE"
TOKEN_FILE = ".storage-token"
# On a cluster: retries of a failed trial (Tune) and of a failed training run (Train), and the
# training time between checkpoints, i.e. the most a lost node costs a trial.
CLUSTER_RETRIES = 3
CLUSTER_CHECKPOINT_MINUTES = 10.0
CHECK_TIMEOUT_S = 30.0
FIX = (
    f"put the study's output_dir on storage every node mounts at the same path (set ${STORAGE_ENV}, "
    "e.g. /mnt/cluster_storage/rerank_ray, and leave base.output_dir relative; docs/CLUSTER.md)"
)


class StorageError(RuntimeError):
    """A node cannot see the study's storage root."""


def storage_root() -> Path | None:
    """``$RERANK_RAY_STORAGE`` (the cluster's shared root), or None on one machine."""
    value = os.environ.get(STORAGE_ENV, "").strip()
    return Path(value) if value else None


def on_cluster() -> bool:
    """Whether this run goes to a Ray cluster (shared storage named, or a cluster address)."""
    return bool(storage_root() or os.environ.get("RAY_ADDRESS", "").strip())


def default_retries() -> int:
    """``train.max_failures`` / ``tune.max_failures`` when the YAML leaves them out."""
    return CLUSTER_RETRIES if on_cluster() else 0


def default_checkpoint_minutes() -> float | None:
    """``train.checkpoint_every_minutes`` when the YAML leaves it out."""
    return CLUSTER_CHECKPOINT_MINUTES if on_cluster() else None


def resolve_output_dir(path: Path) -> Path:
    """A relative output dir under ``$RERANK_RAY_STORAGE`` when it is set; otherwise as given."""
    root = storage_root()
    return root / path if root is not None and not path.is_absolute() else path


def fault_tolerance_line(train: Any, tune_retries: int) -> str:
    """One line for the dry run and the log: what a lost node costs under these settings."""
    every = []
    if train.checkpoint_every_minutes:
        every.append(f"every {train.checkpoint_every_minutes:g} min of training")
    if train.checkpoint_every_steps:
        every.append(f"every {train.checkpoint_every_steps} steps")
    where = "on a cluster" if on_cluster() else "on one machine"
    root = storage_root()
    return (
        f"fault tolerance ({where}{f', storage {root}' if root else ''}): a failed trial is retried "
        f"{tune_retries} time(s) (tune.max_failures), its training restarted {train.max_failures} "
        f"time(s) from the last checkpoint (train.max_failures); checkpoints "
        f"{' and '.join(every) or 'only at the end of each epoch'}"
    )


@dataclass(frozen=True)
class StorageToken:
    """A one-time token written under a study's folder: what every node must read back."""

    path: str
    token: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, str]) -> StorageToken:
        return cls(**data)


def write_token(folder: Path) -> StorageToken:
    """A fresh token in ``<folder>/.storage-token`` (written whole, then renamed into place)."""
    from rerank_ray.io import write_text  # pandas and pyarrow: not for the probe's import

    token = StorageToken(path=str(Path(folder).resolve() / TOKEN_FILE), token=uuid.uuid4().hex)
    write_text(token.path, token.token)
    return token


def node_sees(token: StorageToken) -> str | None:
    """None when this process's node reads `token` back; else what it found instead."""
    path = Path(token.path)
    if not path.parent.is_dir():
        return f"{path.parent} does not exist there"
    if not path.is_file():
        return f"{path} does not exist there"
    found = path.read_text().strip()
    return None if found == token.token else f"{path} holds another study's token there"


def verify_token(token: StorageToken, what: str) -> None:
    """Raise StorageError at once when this node cannot see the study's storage (`what`: who asks)."""
    problem = node_sees(token)
    if problem is not None:
        raise StorageError(f"{what} on node {_node_name()} cannot see the study's storage: {problem}; {FIX}")


def _node_name() -> str:
    """This node's host name, IP and Ray node id (several nodes may share a host name)."""
    import ray

    if not ray.is_initialized():
        return socket.gethostname()
    node_id = ray.get_runtime_context().get_node_id()
    return f"{socket.gethostname()} ({ray.util.get_node_ip_address()}, node {node_id[:8]})"


def _probe(token: dict[str, str]) -> tuple[str, str | None]:
    """The check's task on one node: (this node's name, what it could not see or None)."""
    return _node_name(), node_sees(StorageToken.from_dict(token))


def check_nodes(folder: Path, *, timeout_s: float = CHECK_TIMEOUT_S) -> StorageToken:
    """Write a token under `folder` and read it back on every alive node of the connected Ray;
    StorageError, naming each node that cannot, when one cannot or does not answer within
    `timeout_s`. One node has nothing to prove: the token is written and returned."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    token = write_token(folder)
    nodes = [n for n in ray.nodes() if n["Alive"]]
    if len(nodes) < 2:
        return token
    t0 = time.perf_counter()
    probe = ray.remote(num_cpus=0, max_retries=0)(_probe)
    # Keyed by node id: several nodes may share an address (one host, or containers behind NAT).
    refs = {
        n["NodeID"]: probe.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
        ).remote(token.to_dict())
        for n in nodes
    }
    ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout_s)
    problems = []
    for node_id, ref in refs.items():
        if ref not in ready:
            problems.append(f"node {node_id[:8]} did not answer within {timeout_s:g} s")
            continue
        name, problem = ray.get(ref)
        if problem is not None:
            problems.append(f"node {name} cannot see the study's storage: {problem}")
    if problems:
        raise StorageError(f"{'; '.join(problems)}; {FIX}")
    log.info("storage: all %d nodes see %s (checked in %.1f s)", len(nodes), folder, time.perf_counter() - t0)
    return token
