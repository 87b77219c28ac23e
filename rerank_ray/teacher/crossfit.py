"""Cross-fitted teacher scores: every group is scored by a teacher that never trained on its query.

A teacher trained on the groups it then scores has seen their labels, so on those groups its
targets are close to one-hot and distillation collapses into contrastive training. Cross-fitting
(``teacher.cross_fit: k``) removes that:

1. ``assign_folds`` splits the training *query ids* into k folds (seeded, deterministic: a
   permutation of the sorted unique ids, fold = position mod k), so all groups of a query fall
   in one fold;
2. ``split_groups`` writes, per fold i, the groups of the other k-1 folds (fold teacher i
   trains on them) and the groups of fold i (fold teacher i scores them);
3. ``merge_fold_scores`` concatenates the k fold score files into one scoring job folder with
   the contract of ``teacher/score.py`` (``scores/part-00000.parquet``: ``query_id, doc_id,
   score``, plus ``fold: int64``, the fold whose teacher scored the pair) and a
   ``manifest.json`` whose ``cross_fit`` entry lists, per fold, the query ids and group ids it
   scored, the query ids its teacher trained on, that teacher's run fingerprint
   (``train.driver.run_fingerprint``) and model fingerprint (``teacher_fingerprint``), and its
   model folder. ``check_out_of_sample(manifest)`` proves that no scored query was trained on.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rerank_ray.io import write_json, write_parquet
from rerank_ray.teacher.score import JOB, MANIFEST, SCORE_COLUMNS, SCORES_DIR, shard_path


def assign_folds(query_ids: list[str], k: int, seed: int) -> dict[str, int]:
    """``{query_id: fold}`` for the unique `query_ids`, folds 0..k-1 of sizes differing by <= 1."""
    ids = sorted(set(query_ids))
    if k < 2 or len(ids) < k:
        raise ValueError(f"cross_fit={k} needs k >= 2 and at least k training queries, found {len(ids)}")
    order = np.random.default_rng(seed).permutation(len(ids))
    return {ids[j]: position % k for position, j in enumerate(order)}


def split_groups(
    groups_path: str | Path, folds: dict[str, int], fold: int, out_dir: str | Path
) -> tuple[Path, Path]:
    """Write fold `fold`'s training groups (the other folds) and scored groups (this fold) as
    ``<out_dir>/train/groups.parquet`` and ``<out_dir>/scored/groups.parquet``."""
    groups = pd.read_parquet(groups_path)
    in_fold = groups["query_id"].astype(str).map(folds) == fold
    paths = []
    for part, rows in (("train", groups[~in_fold]), ("scored", groups[in_fold])):
        path = Path(out_dir) / part / "groups.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_parquet(path, rows.reset_index(drop=True))
        paths.append(path)
    return paths[0], paths[1]


@dataclass(frozen=True)
class FoldRecord:
    """One fold teacher: what it trained on, what it scored, and which model it was."""

    fold: int
    scored_query_ids: list[str]
    scored_group_ids: list[int]
    trained_query_ids: list[str]
    run_fingerprint: str
    teacher_fingerprint: str
    model_dir: str
    scores_dir: str


def fold_record(
    fold: int, train_groups: Path, scored_groups: Path, *, run_fingerprint: str, score_manifest: dict[str, Any],
    model_dir: str, scores_dir: str,
) -> FoldRecord:  # fmt: skip
    trained = pd.read_parquet(train_groups, columns=["query_id"])
    scored = pd.read_parquet(scored_groups, columns=["query_id", "group_id"])
    return FoldRecord(
        fold=fold,
        scored_query_ids=sorted(set(scored["query_id"].astype(str))),
        scored_group_ids=sorted(int(g) for g in scored["group_id"]),
        trained_query_ids=sorted(set(trained["query_id"].astype(str))),
        run_fingerprint=run_fingerprint,
        teacher_fingerprint=score_manifest["teacher"]["fingerprint"],
        model_dir=model_dir,
        scores_dir=scores_dir,
    )


def merge_fold_scores(folds: list[FoldRecord], out_dir: str | Path, *, k: int, seed: int) -> dict[str, Any]:
    """Concatenate the fold teachers' scores into one scoring job folder; returns its manifest."""
    out_dir = Path(out_dir)
    (out_dir / SCORES_DIR).mkdir(parents=True, exist_ok=True)
    for stale in (out_dir / SCORES_DIR).glob("part-*.parquet"):  # another teacher's job, if any
        stale.unlink()
    (out_dir / JOB).unlink(missing_ok=True)
    parts = [pd.read_parquet(f.scores_dir)[SCORE_COLUMNS].assign(fold=f.fold) for f in folds]
    scores = pd.concat(parts, ignore_index=True).sort_values(["query_id", "doc_id"], ignore_index=True)
    scores["fold"] = scores["fold"].astype("int64")
    final = shard_path(out_dir, 0)
    write_parquet(final, scores)
    fingerprint = hashlib.sha256("".join(f.teacher_fingerprint for f in folds).encode()).hexdigest()
    manifest = {
        "teacher": {"kind": "cross_fit", "path": str(out_dir), "fingerprint": fingerprint},
        "count": len(scores),
        "coverage": {"pairs_expected": len(scores), "pairs_scored": int(scores["score"].notna().sum())},
        "cross_fit": {"k": k, "seed": seed, "folds": [asdict(f) for f in folds]},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    manifest["out_of_sample"] = check_out_of_sample(manifest)
    write_json(out_dir / MANIFEST, manifest)
    return manifest


def check_out_of_sample(manifest: dict[str, Any]) -> bool:
    """True when no fold teacher scored a query it trained on and no query was scored twice;
    otherwise raises ValueError naming the queries."""
    seen: set[str] = set()
    for fold in manifest["cross_fit"]["folds"]:
        scored = set(fold["scored_query_ids"])
        leaked = sorted(scored & set(fold["trained_query_ids"]))
        if leaked:
            raise ValueError(
                f"cross-fit fold {fold['fold']} scored queries its teacher trained on: {leaked[:5]}"
            )
        twice = sorted(scored & seen)
        if twice:
            raise ValueError(f"cross-fit fold {fold['fold']} scored queries another fold scored: {twice[:5]}")
        seen |= scored
    return True
