"""Teacher scoring as a resumable Ray Data batch job.

Input: the training groups (Parquet, ``data/groups.py``: ``query_id, query, doc_ids, docs``), or
any table of pairs. They are flattened to the unique pairs ``query_id: str, doc_id: str,
query: str, doc: str``, sorted by (query_id, doc_id), and split into deterministic shards of
``scoring.shard_size`` pairs: shard ``i`` always holds the same pairs for the same input.

Output, under ``out_dir``:

- ``scores/part-<i>.parquet``: ``query_id: str, doc_id: str, score: float64``. Scores are raw
  teacher outputs (cross-encoder logits, or ``scale * cosine`` for a bi-encoder), not
  probabilities; higher = more relevant. ``pd.read_parquet(out_dir / "scores")`` reads them all,
  and ``ScoreResult.path`` (that folder) is what ``train.teacher_scores`` takes.
- ``job.json``: the provenance of the shards on disk (written before the first shard).
- ``manifest.json``: written when every shard is done: provenance (teacher fingerprint = a hash
  of the checkpoint's files; data fingerprint = a hash of the pairs; max lengths; dtype), the
  pair count, coverage, cost (wall time, pairs/s, CPU/GPU-hours) and ``created``.

Resumption: a rerun with the same provenance scores only the shards whose file is missing
(a shard is written to a hidden temporary name and renamed, so a file on disk is complete). A
finished job with the same provenance is reused as it is. Shards of a different provenance are
deleted before scoring starts, so a folder never mixes two teachers or two pair lists.

``TeacherScorer`` is the callable class given to ``map_batches``: it loads the teacher in
``__init__`` and scores one pandas batch in ``__call__``, so a unit test can run it without Ray.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from rerank_ray.data.shards import MissingTeacherScores
from rerank_ray.teacher.config import ScoringConfig, TeacherModel

log = logging.getLogger("rerank_ray.teacher")

PAIR_COLUMNS = ["query_id", "doc_id", "query", "doc"]
SCORE_COLUMNS = ["query_id", "doc_id", "score"]
MANIFEST = "manifest.json"
JOB = "job.json"
SCORES_DIR = "scores"


# ---------------------------------------------------------------------------------------------
# The scorer: one batch, no Ray.


class TeacherScorer:
    """Scores pandas batches of pairs with one teacher, loaded once per actor.

    ``__call__`` takes a DataFrame with ``query_id, doc_id, query, doc`` (plus any extra columns,
    which are passed through: the job uses a ``shard`` column) and returns ``query_id, doc_id,
    score`` (float64) in the same row order.
    """

    def __init__(self, teacher: dict[str, Any], batch_size: int = 64, dtype: str = "float32") -> None:
        import torch

        self.teacher = TeacherModel.model_validate(teacher)
        self.batch_size = batch_size
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
        if self.teacher.kind == "cross_encoder":
            from rerank_ray.models import load_reranker

            self.model = load_reranker(self.teacher.path).to(self.device, torch_dtype).eval()
        else:
            from transformers import AutoModel, AutoTokenizer

            from rerank_ray.models.sources import resolve_source

            source = resolve_source(self.teacher.path)
            self.tokenizer = AutoTokenizer.from_pretrained(source)
            self.model = AutoModel.from_pretrained(source).to(self.device, torch_dtype).eval()

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        queries = batch["query"].astype(str).tolist()
        docs = batch["doc"].astype(str).tolist()
        if self.teacher.kind == "cross_encoder":
            scores = self.model.score(queries, docs, batch_size=self.batch_size)
        else:
            scores = self._bi_encoder_scores(queries, docs)
        out = batch.drop(columns=["query", "doc"]).copy()
        out["score"] = pd.Series(scores, index=out.index, dtype="float64")
        return out

    def _embed(self, texts: list[str], max_length: int) -> Any:
        """L2-normalised mean-pooled embeddings ``[len(texts), hidden]`` (sentence-transformers'
        pooling for all-MiniLM-L6-v2: mean over non-padding tokens)."""
        import torch

        chunks = []
        with torch.no_grad():
            for start in range(0, len(texts), self.batch_size):
                enc = self.tokenizer(
                    texts[start : start + self.batch_size],
                    max_length=max_length,
                    truncation=True,
                    padding=True,
                    return_tensors="pt",
                ).to(self.device)
                hidden = self.model(**enc).last_hidden_state.float()
                mask = enc["attention_mask"].unsqueeze(-1).float()
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                chunks.append(torch.nn.functional.normalize(pooled, dim=-1))
        return torch.cat(chunks)

    def _bi_encoder_scores(self, queries: list[str], docs: list[str]) -> list[float]:
        unique = list(dict.fromkeys(queries))
        q_emb = self._embed(unique, self.teacher.query_max_length)
        d_emb = self._embed(docs, self.teacher.max_length)
        index = {q: i for i, q in enumerate(unique)}
        q_rows = q_emb[[index[q] for q in queries]]
        return ((q_rows * d_emb).sum(-1) * self.teacher.scale).tolist()


# ---------------------------------------------------------------------------------------------
# Pairs, fingerprints, coverage.


def pairs_from_groups(groups: pd.DataFrame) -> pd.DataFrame:
    """The unique (query_id, doc_id) pairs of a groups table with their texts, sorted."""
    flat = groups[["query_id", "query", "doc_ids", "docs"]].explode(["doc_ids", "docs"], ignore_index=True)
    flat = flat.rename(columns={"doc_ids": "doc_id", "docs": "doc"})
    flat["query_id"] = flat["query_id"].astype(str)
    flat["doc_id"] = flat["doc_id"].astype(str)
    flat = flat.drop_duplicates(["query_id", "doc_id"])
    return flat[PAIR_COLUMNS].sort_values(["query_id", "doc_id"], ignore_index=True)


def data_fingerprint(pairs: pd.DataFrame) -> str:
    """sha256 of the pairs, ids and texts, in their (sorted) order."""
    h = hashlib.sha256()
    for row in pairs[PAIR_COLUMNS].itertuples(index=False):
        h.update("\t".join(row).encode())
        h.update(b"\n")
    return h.hexdigest()


def teacher_fingerprint(teacher: TeacherModel) -> str:
    """sha256 of every file of the teacher's folder (relative path + bytes), in sorted order."""
    if teacher.kind == "cross_encoder":
        folder = Path(teacher.path)
    else:
        from rerank_ray.models.sources import resolve_source

        folder = Path(resolve_source(teacher.path))
    if not folder.is_dir():
        raise FileNotFoundError(f"teacher {teacher.kind} folder {folder} does not exist")
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode())
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class Coverage:
    pairs_expected: int
    pairs_scored: int
    missing: list[tuple[str, str]]

    @property
    def complete(self) -> bool:
        return not self.missing

    def summary(self) -> str:
        if self.complete:
            return f"all {self.pairs_expected} pairs scored"
        return (
            f"{len(self.missing)} of {self.pairs_expected} pairs have no teacher score, "
            f"e.g. {self.missing[:3]}"
        )


def verify_coverage(pairs: pd.DataFrame, scores: pd.DataFrame) -> Coverage:
    """Which of `pairs` (query_id, doc_id) have no finite score in `scores`."""
    finite = scores[scores["score"].notna() & (scores["score"].abs() != float("inf"))]
    have = set(zip(finite["query_id"].astype(str), finite["doc_id"].astype(str), strict=True))
    wanted = list(zip(pairs["query_id"], pairs["doc_id"], strict=True))
    missing = [p for p in wanted if p not in have]
    return Coverage(pairs_expected=len(wanted), pairs_scored=len(wanted) - len(missing), missing=missing)


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


def provenance(teacher: TeacherModel, pairs: pd.DataFrame, scoring: ScoringConfig) -> dict[str, Any]:
    """What decides the scores on disk; two jobs with equal provenance give the same shards."""
    if teacher.kind == "cross_encoder":
        meta = json.loads((Path(teacher.path) / "rerank_ray.json").read_text())
        lengths = {"max_length": meta["model"]["max_length"]}
    else:
        lengths = {"max_length": teacher.max_length, "query_max_length": teacher.query_max_length}
        lengths["scale"] = teacher.scale
    return {
        "teacher": {
            "kind": teacher.kind,
            "path": str(teacher.path),
            "fingerprint": teacher_fingerprint(teacher),
        },
        "data_fingerprint": data_fingerprint(pairs),
        **lengths,
        "dtype": scoring.dtype,
        "count": len(pairs),
        "shard_size": scoring.shard_size,
        "shards": -(-len(pairs) // scoring.shard_size),
    }


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    keys = (
        "teacher",
        "data_fingerprint",
        "max_length",
        "query_max_length",
        "scale",
        "dtype",
        "count",
        "shard_size",
    )
    return all(a.get(k) == b.get(k) for k in keys)


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
        if _same(manifest, prov) and all(shard_path(out_dir, i).is_file() for i in range(prov["shards"])):
            log.info("teacher scores in %s are up to date (%d pairs); reusing them", out_dir, prov["count"])
            return ScoreResult(path=out_dir / SCORES_DIR, manifest=manifest, reused=True)
        manifest_path.unlink()

    _claim(out_dir, prov)
    shard_of = pd.Series(range(len(pairs))) // scoring.shard_size
    todo = [i for i in range(prov["shards"]) if not shard_path(out_dir, i).is_file()]
    log.info(
        "scoring %d pairs with %s teacher %s: %d of %d shards to do, %d actor(s)",
        len(pairs), teacher.kind, teacher.path, len(todo), prov["shards"], scoring.actors,
    )  # fmt: skip
    t0 = time.perf_counter()
    if todo:
        _run_job(pairs.assign(shard=shard_of), todo, teacher, out_dir, scoring)
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
        "cost": {
            "wall_s": wall_s,
            "pairs_scored_now": scored,
            "pairs_per_s": scored / wall_s if wall_s > 0 and scored else None,
            "cpu_hours": wall_s / 3600 * scoring.actors * scoring.cpus_per_actor if scored else 0.0,
            "gpu_hours": wall_s / 3600 * scoring.actors * scoring.gpus_per_actor if scored else 0.0,
            "actors": scoring.actors,
        },
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    manifest_path.write_text(json.dumps(manifest, indent=2))
    log.info("teacher scores: %s -> %s", coverage.summary(), out_dir / SCORES_DIR)
    return ScoreResult(path=out_dir / SCORES_DIR, manifest=manifest, shards_scored=len(todo))


def _claim(out_dir: Path, prov: dict[str, Any]) -> None:
    """Make `out_dir` hold only shards of this provenance: keep them when job.json matches,
    delete them (ours only: part-*.parquet) when it does not."""
    job = out_dir / JOB
    if job.is_file() and not _same(json.loads(job.read_text()), prov):
        stale = sorted((out_dir / SCORES_DIR).glob("part-*.parquet"))
        log.warning("teacher scores in %s come from another teacher or pair list; deleting %d shard(s)", out_dir, len(stale))  # fmt: skip
        for path in stale:
            path.unlink()
    (out_dir / SCORES_DIR).mkdir(parents=True, exist_ok=True)
    job.write_text(json.dumps(prov, indent=2))


def _run_job(
    pairs: pd.DataFrame, todo: list[int], teacher: TeacherModel, out_dir: Path, scoring: ScoringConfig
) -> None:
    """Score the shards in `todo` over an actor pool; write each shard as soon as it is whole."""
    import ray
    import ray.data

    # One block per shard, so shards spread over the actors and finish one by one.
    blocks = [pairs[pairs["shard"] == i] for i in todo]
    ds = ray.data.from_pandas(blocks).map_batches(
        TeacherScorer,
        fn_constructor_kwargs={
            "teacher": teacher.model_dump(mode="json"),
            "batch_size": scoring.batch_size,
            "dtype": scoring.dtype,
        },
        compute=ray.data.ActorPoolStrategy(size=scoring.actors),
        num_cpus=scoring.cpus_per_actor,
        num_gpus=scoring.gpus_per_actor,
        batch_size=scoring.batch_size,
        batch_format="pandas",
    )
    expected = {i: int((pairs["shard"] == i).sum()) for i in todo}
    pending: dict[int, list[pd.DataFrame]] = {i: [] for i in todo}
    for batch in ds.iter_batches(batch_format="pandas", batch_size=None):
        for shard, part in batch.groupby("shard"):
            shard = int(shard)
            pending[shard].append(part)
            if sum(len(p) for p in pending[shard]) == expected[shard]:
                _write_shard(out_dir, shard, pd.concat(pending.pop(shard)))
    if pending:
        raise RuntimeError(f"teacher scoring ended with incomplete shard(s) {sorted(pending)} in {out_dir}")


def _write_shard(out_dir: Path, index: int, frame: pd.DataFrame) -> None:
    frame = frame[SCORE_COLUMNS].sort_values(["query_id", "doc_id"], ignore_index=True)
    final = shard_path(out_dir, index)
    tmp = final.with_name(f".{final.name}.tmp")  # hidden: Parquet readers skip dot-files
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, final)
