"""Teacher scoring as a resumable Ray Data batch job.

Input: the training groups (Parquet, ``data/groups.py``: ``query_id, query, doc_ids, docs``), or
any table of pairs. They are flattened to the unique pairs ``query_id: str, doc_id: str,
query: str, doc: str``, sorted by (query_id, doc_id) (the data fingerprint's order), and split
into deterministic shards of ``scoring.shard_size`` pairs taken in :func:`length_order` (longest
first, ties by ids): shard ``i`` always holds the same pairs for the same input, and each shard
is a band of similar lengths.

Output, under ``out_dir``:

- ``scores/part-<i>.parquet``: ``query_id: str, doc_id: str, score: float64``. Scores are raw
  teacher outputs (cross-encoder logits, or ``scale * cosine`` for a bi-encoder), not
  probabilities; higher = more relevant. ``pd.read_parquet(out_dir / "scores")`` reads them all,
  and ``ScoreResult.path`` (that folder) is what ``train.teacher_scores`` takes.
- ``job.json``: the provenance of the shards on disk (written before the first shard).
- ``manifest.json``: written when every shard is done: provenance (teacher fingerprint = a hash
  of the checkpoint's files; data fingerprint = a hash of the pairs; max lengths; dtype;
  ``fingerprint``, a hash of all that provenance but paths and sharding, which keys the reuse of
  models trained on these scores: ``train/identity.py``), the
  pair count, coverage, cost (wall time, pairs/s, CPU/GPU-hours) and ``created``.

The provenance, fingerprints and coverage check are ``teacher/provenance.py``'s; this module is
the job. Resumption: a rerun with the same provenance scores only the shards whose file is missing
(a shard is written to a hidden temporary name and renamed, so a file on disk is complete). A
finished job with the same provenance is reused as it is. Shards of a different provenance are
deleted before scoring starts, so a folder never mixes two teachers or two pair lists.

``TeacherScorer`` is the callable class given to ``map_batches``: it loads the teacher in
``__init__`` and scores one pandas batch in ``__call__``, so a unit test can run it without Ray.

Layout for speed: the shards to score are cut into blocks (never spanning two shards) small
enough that every actor gets several, and each actor takes one block at a time, so no actor
idles while another holds queued work. An actor scores a whole block per call, sorted by token count
before it is cut into forward passes of ``scoring.batch_size`` pairs (little padding), with
torch on ``cpus_per_actor`` threads. The same job reranks large evaluation suites
(``evaluation/evaluate.py``). A CPU job smaller than ``scoring.pool_min_pairs`` does the same
work in the calling process (same scorer, blocks and shards), where a pool's start-up would cost
more than it saves; the manifest's ``cost.where`` says which ran.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from rerank_ray.data.shards import MissingTeacherScores
from rerank_ray.io import write_json, write_parquet
from rerank_ray.teacher import MANIFEST, SCORE_COLUMNS
from rerank_ray.teacher.config import ScoringConfig, TeacherModel
from rerank_ray.teacher.provenance import (
    PAIR_COLUMNS,
    pairs_from_groups,
    provenance,
    same_provenance,
    verify_coverage,
)

log = logging.getLogger("rerank_ray.teacher")

JOB = "job.json"
SCORES_DIR = "scores"


# ---------------------------------------------------------------------------------------------
# The scorer: one batch, no Ray.


class TeacherScorer:
    """Scores pandas batches of pairs with one teacher, loaded once per actor.

    ``__call__`` takes a DataFrame with ``query_id, doc_id, query, doc`` (plus any extra columns,
    which are passed through: the job uses a ``shard`` column) and returns ``query_id, doc_id,
    score`` (float64) in the same row order. The whole frame is sorted by token count before it is
    cut into forward passes of ``batch_size`` pairs, so give it large frames (the job gives it whole
    blocks). ``threads`` sets torch's CPU threads (None: leave them). The model is whatever the
    teacher's kind loads (``TeacherModel.load``); matmuls run in bf16 under autocast as the
    teacher says: a cross-encoder by its saved ``model.autocast``, a bi-encoder by
    ``TeacherModel.autocast`` (``rerank_ray.models.precision``; auto = on CUDA only).
    """

    def __init__(
        self,
        teacher: dict[str, Any],
        batch_size: int = 64,
        dtype: str = "float32",
        threads: int | None = None,
    ) -> None:
        import torch

        if threads is not None:
            torch.set_num_threads(threads)
        self.teacher = TeacherModel.model_validate(teacher)
        self.batch_size = batch_size
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
        self.model = self.teacher.load(self.device, torch_dtype)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        import torch

        queries = batch["query"].astype(str).tolist()
        docs = batch["doc"].astype(str).tolist()
        with torch.inference_mode():
            scores = self.model.score(queries, docs, batch_size=self.batch_size)
        out = batch.drop(columns=["query", "doc"]).copy()
        out["score"] = pd.Series(scores, index=out.index, dtype="float64")
        return out


def length_order(queries: list[str], docs: list[str], query_ids: Any, doc_ids: Any) -> list[int]:
    """Positions of the pairs, longest (query + document characters) first, ties by (query_id,
    doc_id): a total order, so shards and forward passes are the same on every run, and the
    same as in-process evaluation's (``evaluation.rerank``)."""
    keys = list(zip(query_ids, doc_ids, strict=True))
    return sorted(range(len(keys)), key=lambda i: (-(len(queries[i]) + len(docs[i])), keys[i]))


def torch_threads(cpus: float | None = None) -> int:
    """Threads for torch on CPU: `cpus` rounded (at least 1); None = ``OMP_NUM_THREADS`` when set
    (Ray sets it in its workers from their CPU budget), else every core this process may use."""
    if cpus is None:
        cpus = float(os.environ.get("OMP_NUM_THREADS") or len(os.sched_getaffinity(0)))
    return max(1, round(cpus))


# ---------------------------------------------------------------------------------------------
# The job.


@dataclass(frozen=True)
class ScoreResult:
    path: Path
    """Folder of Parquet shards (query_id, doc_id, score): what ``train.teacher_scores`` takes."""
    manifest: dict[str, Any]
    reused: bool = False
    shards_scored: int = 0


def shard_path(out_dir: Path, index: int) -> Path:
    return Path(out_dir) / SCORES_DIR / f"part-{index:05d}.parquet"


def score_groups(
    groups_path: str | Path, teacher: TeacherModel, out_dir: str | Path, *, scoring: ScoringConfig
) -> ScoreResult:
    """Score every pair of the groups at `groups_path` with `teacher` into `out_dir`."""
    pairs = pairs_from_groups(pd.read_parquet(groups_path))
    return score_pairs(pairs, teacher, out_dir, scoring=scoring, source=str(groups_path))


def score_pairs(
    pairs: pd.DataFrame,
    teacher: TeacherModel,
    out_dir: str | Path,
    *,
    scoring: ScoringConfig,
    source: str = "",
) -> ScoreResult:
    """Score `pairs` (``query_id, doc_id, query, doc``, unique) resumably; see the module doc."""
    out_dir = Path(out_dir).resolve()
    pairs = pairs[PAIR_COLUMNS].sort_values(["query_id", "doc_id"], ignore_index=True)
    prov = provenance(teacher, pairs, scoring)
    manifest_path = out_dir / MANIFEST
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        if same_provenance(manifest, prov) and all(
            shard_path(out_dir, i).is_file() for i in range(prov["shards"])
        ):
            log.info("teacher scores in %s are up to date (%d pairs); reusing them", out_dir, prov["count"])
            return ScoreResult(path=out_dir / SCORES_DIR, manifest=manifest, reused=True)
        manifest_path.unlink()

    _claim(out_dir, prov)
    order = length_order(pairs["query"].tolist(), pairs["doc"].tolist(), pairs["query_id"], pairs["doc_id"])
    shard_of = pd.Series(0, index=pairs.index)
    shard_of.iloc[order] = [k // scoring.shard_size for k in range(len(order))]
    todo = [i for i in range(prov["shards"]) if not shard_path(out_dir, i).is_file()]
    log.info(
        "scoring %d pairs with %s teacher %s: %d of %d shards to do",
        len(pairs), teacher.kind, teacher.path, len(todo), prov["shards"],
    )  # fmt: skip
    t0 = time.perf_counter()
    where = (
        _run_job(pairs.assign(shard=shard_of).iloc[order], todo, teacher, out_dir, scoring) if todo else None
    )
    wall_s = time.perf_counter() - t0

    scores = pd.read_parquet(out_dir / SCORES_DIR)
    coverage = verify_coverage(pairs, scores)
    if not coverage.complete:
        raise MissingTeacherScores(
            f"teacher scores in {out_dir}: {coverage.summary()}. Delete the shards that hold them "
            f"(or the whole folder) and rerun to rescore"
        )
    scored = sum(min(scoring.shard_size, len(pairs) - i * scoring.shard_size) for i in todo)
    manifest = {
        **prov,
        "source": source,
        "coverage": {"pairs_expected": coverage.pairs_expected, "pairs_scored": coverage.pairs_scored},
        "cost": _job_cost(scoring, wall_s, scored, where),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_json(manifest_path, manifest)
    log.info("teacher scores: %s -> %s", coverage.summary(), out_dir / SCORES_DIR)
    return ScoreResult(path=out_dir / SCORES_DIR, manifest=manifest, shards_scored=len(todo))


def _job_cost(scoring: ScoringConfig, wall_s: float, scored: int, where: str | None) -> dict[str, Any]:
    """The manifest's ``cost``: what scoring `scored` pairs took now, and how the job ran."""
    return {
        "wall_s": wall_s,
        "pairs_scored_now": scored,
        "pairs_per_s": scored / wall_s if wall_s > 0 and scored else None,
        "cpu_hours": wall_s / 3600 * scoring.actors * scoring.cpus_per_actor if scored else 0.0,
        "gpu_hours": wall_s / 3600 * scoring.actors * scoring.gpus_per_actor if scored else 0.0,
        "actors": scoring.actors,
        "where": where,  # "pool", "in_process", or None when every shard was already on disk
    }


def _claim(out_dir: Path, prov: dict[str, Any]) -> None:
    """Make `out_dir` hold only shards of this provenance: keep them when job.json matches,
    delete them (ours only: part-*.parquet) when it does not."""
    job = out_dir / JOB
    if job.is_file() and not same_provenance(json.loads(job.read_text()), prov):
        stale = sorted((out_dir / SCORES_DIR).glob("part-*.parquet"))
        log.warning("teacher scores in %s come from another teacher or pair list; deleting %d shard(s)", out_dir, len(stale))  # fmt: skip
        for path in stale:
            path.unlink()
    (out_dir / SCORES_DIR).mkdir(parents=True, exist_ok=True)
    write_json(job, prov)


def _run_job(
    pairs: pd.DataFrame, todo: list[int], teacher: TeacherModel, out_dir: Path, scoring: ScoringConfig
) -> str:
    """Score the shards in `todo`, over an actor pool or in process (``scoring.pool_min_pairs``);
    write each shard as soon as it is whole. Returns where it ran: "pool" or "in_process"."""
    work = pairs[pairs["shard"].isin(todo)]
    blocks = _blocks(work, todo, scoring.actors, scoring.batch_size)
    in_process = scoring.gpus_per_actor == 0 and len(work) < scoring.pool_min_pairs
    log.info(
        "scoring %d pairs %s", len(work),
        "in process (fewer than scoring.pool_min_pairs)" if in_process else f"on {scoring.actors} actor(s)",
    )  # fmt: skip
    scored = (
        _score_in_process(blocks, teacher, scoring)
        if in_process
        else _score_on_pool(blocks, teacher, scoring)
    )
    expected = {i: int((work["shard"] == i).sum()) for i in todo}
    pending: dict[int, list[pd.DataFrame]] = {i: [] for i in todo}
    for batch in scored:
        for shard, part in batch.groupby("shard"):
            shard = int(shard)
            pending[shard].append(part)
            if sum(len(p) for p in pending[shard]) == expected[shard]:
                _write_shard(out_dir, shard, pd.concat(pending.pop(shard)))
    if pending:
        raise RuntimeError(f"teacher scoring ended with incomplete shard(s) {sorted(pending)} in {out_dir}")
    return "in_process" if in_process else "pool"


def _score_in_process(
    blocks: list[pd.DataFrame], teacher: TeacherModel, scoring: ScoringConfig
) -> Iterator[pd.DataFrame]:
    """The pool's work done here, block by block, by the same scorer; torch's thread count is
    restored afterwards."""
    import torch

    before = torch.get_num_threads()
    threads = min(torch_threads(scoring.actors * scoring.cpus_per_actor), torch_threads())
    try:
        scorer = TeacherScorer(
            teacher.model_dump(mode="json"),
            batch_size=scoring.batch_size,
            dtype=scoring.dtype,
            threads=threads,
        )
        for block in blocks:
            yield scorer(block)
    finally:
        torch.set_num_threads(before)


def _score_on_pool(
    blocks: list[pd.DataFrame], teacher: TeacherModel, scoring: ScoringConfig
) -> Iterator[pd.DataFrame]:
    """The blocks over a Ray Data actor pool of ``scoring.actors`` scorers (on the Ray this
    process already joined, else ``$RAY_ADDRESS`` or a private local one: ``start_ray``)."""
    import ray
    import ray.data

    from rerank_ray.ray_runtime import scoring_need, start_ray

    start_ray(needs=[scoring_need(scoring)])

    ds = ray.data.from_pandas(blocks).map_batches(
        TeacherScorer,
        fn_constructor_kwargs={
            "teacher": teacher.model_dump(mode="json"),
            "batch_size": scoring.batch_size,
            "dtype": scoring.dtype,
            "threads": torch_threads(scoring.cpus_per_actor),
        },
        # One block at a time per actor, so a free actor always finds work left.
        compute=ray.data.ActorPoolStrategy(size=scoring.actors, max_tasks_in_flight_per_actor=1),
        num_cpus=scoring.cpus_per_actor,
        num_gpus=scoring.gpus_per_actor,
        # Whole blocks: the scorer sorts a block by length before cutting forward passes.
        batch_size=None,
        batch_format="pandas",
    )
    yield from ds.iter_batches(batch_format="pandas", batch_size=None)


# Blocks per actor when the work is small: enough that the last block leaves the other actors
# idle only briefly, few enough that the per-block overhead (a Ray task, a length sort) stays
# small. The measurement behind 8 is in docs/BENCHMARKS.md ("Measurements behind code constants").
BLOCKS_PER_ACTOR = 8


def _blocks(pairs: pd.DataFrame, todo: list[int], actors: int, batch_size: int) -> list[pd.DataFrame]:
    """The shards in `todo` (rows in scoring order), each cut into blocks of about
    ``pairs / (actors * BLOCKS_PER_ACTOR)`` rows, a multiple of `batch_size`, so every actor gets
    work and forward passes start where they would in one long sorted list; a block never spans
    two shards."""
    work = pairs[pairs["shard"].isin(todo)]
    size = max(1, -(-len(work) // (actors * BLOCKS_PER_ACTOR)))
    size = -(-size // batch_size) * batch_size
    blocks = []
    for _, shard in work.groupby("shard", sort=True):
        blocks.extend(shard.iloc[start : start + size] for start in range(0, len(shard), size))
    return blocks


def _write_shard(out_dir: Path, index: int, frame: pd.DataFrame) -> None:
    frame = frame[SCORE_COLUMNS].sort_values(["query_id", "doc_id"], ignore_index=True)
    final = shard_path(out_dir, index)
    write_parquet(final, frame)  # the temp file is hidden: Parquet readers skip dot-files
