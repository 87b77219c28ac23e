"""Training groups: one positive + (group_size - 1) hard negatives from the first-stage run.

``build_groups(cfg, out_dir)`` writes ``<out_dir>/groups.parquet`` and
``<out_dir>/groups.stats.json`` and returns :class:`GroupsResult`.

Parquet columns (one row per group):

- ``query_id: str``, ``query: str`` (the query text),
- ``doc_ids: list<str>`` of length ``groups.group_size``, **the positive at index 0**, then
  the negatives in sampled order,
- ``docs: list<str>``: the document texts, same order (``title text``),
- ``group_id: int64``: 0..n-1 in file order,
- ``dataset: str``: the dataset name the query comes from (as in ``data.train``).

Sampling, per query of each dataset in ``data.train`` (split ``data.train_split``):

- candidates = the first ``groups.depth`` documents of the run ``data.first_stage``;
- positives = candidates judged ``>= groups.positive_min_label``;
- negatives = candidates judged ``<= groups.negative_max_label``, plus unjudged candidates when
  ``groups.unjudged_as_negatives``; a candidate judged in between is neither;
- the query yields ``min(groups_per_query, #positives)`` groups: each positive (shuffled)
  anchors at most one group, so no (query, positive) pair is repeated; each group draws its
  negatives without replacement (a negative may recur across groups of the same query).

Randomness comes from ``numpy.random.default_rng([groups.seed, sha256(query_id)])``, so a query's
groups do not depend on dataset order, ``max_queries`` or the other queries. Queries with no
positive among the candidates, queries with fewer than ``group_size - 1`` negatives, and
judged or retrieved queries with no text, are skipped, counted and listed in the stats. A run
that repeats a (query_id, doc_id) is handled as ``data.duplicate_run_entries`` says (the
dropped entries are counted in the stats), so no document appears twice among a query's
candidates. ``groups.max_queries`` caps the queries considered
(across datasets, in order).

Queries held out for validation (``data.validation``, see ``DataConfig.validation_ids``) give no
group; their ids are listed per dataset in the stats (``validation_ids``).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from rerank_ray.config import GroupsConfig, RunConfig
from rerank_ray.data.datasets import Collection, DataError, open_collection
from rerank_ray.io import write_json, write_parquet

log = logging.getLogger("rerank_ray.data")

GROUPS_FILE = "groups.parquet"
STATS_FILE = "groups.stats.json"

SCHEMA = pa.schema(
    [
        ("query_id", pa.string()),
        ("query", pa.string()),
        ("doc_ids", pa.list_(pa.string())),
        ("docs", pa.list_(pa.string())),
        ("group_id", pa.int64()),
        ("dataset", pa.string()),
    ]
)


@dataclass
class GroupStats:
    queries_seen: int = 0
    queries_with_groups: int = 0
    queries_without_positive: int = 0
    queries_without_enough_negatives: int = 0
    groups_written: int = 0
    # Judged or retrieved queries with no text in the queries file: never seen, so never sampled.
    queries_without_text: int = 0
    # First-stage run entries dropped as repeats of a (query_id, doc_id) ranked higher.
    run_duplicates_dropped: int = 0
    # Queries held out for validation (data.validation): no group is built from them.
    queries_held_out: int = 0
    validation_ids: dict[str, list[str]] = field(default_factory=dict)
    # dataset -> skipped query ids
    without_positive_ids: dict[str, list[str]] = field(default_factory=dict)
    without_enough_negatives_ids: dict[str, list[str]] = field(default_factory=dict)
    without_text_ids: dict[str, list[str]] = field(default_factory=dict)

    def summary(self) -> str:
        text = (
            f"{self.groups_written} groups from {self.queries_with_groups} of {self.queries_seen} queries; "
            f"skipped {self.queries_without_positive} without a positive among the candidates and "
            f"{self.queries_without_enough_negatives} with too few negatives"
            + (f"; {self.queries_held_out} held out for validation" if self.queries_held_out else "")
        )
        if self.queries_without_text:
            examples = [q for ids in self.without_text_ids.values() for q in ids][:5]
            text += (
                f"; {self.queries_without_text} judged or retrieved queries have no text in the queries "
                f"file and were left out, e.g. {examples}"
            )
        if self.run_duplicates_dropped:
            text += f"; dropped {self.run_duplicates_dropped} repeated first-stage run entries"
        return text

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class GroupsResult:
    path: Path
    stats: GroupStats


def query_rng(seed: int, query_id: str) -> np.random.Generator:
    """A generator that depends only on (seed, query_id) (Python's hash() is salted per process)."""
    digest = int.from_bytes(hashlib.sha256(query_id.encode()).digest()[:8], "little")
    return np.random.default_rng([seed, digest])


def sample_query_groups(
    cfg: GroupsConfig, query_id: str, candidates: list[str], judged: dict[str, int]
) -> tuple[list[list[str]], str | None]:
    """Groups of doc ids (positive first) for one query, or ([], reason) when it is skipped.

    `candidates` are the first-stage doc ids in rank order; `judged` the query's qrels."""
    candidates = candidates[: cfg.depth]
    positives = [d for d in candidates if judged.get(d, -1) >= cfg.positive_min_label]

    def is_negative(doc_id: str) -> bool:
        if doc_id in judged:
            return judged[doc_id] <= cfg.negative_max_label
        return cfg.unjudged_as_negatives

    negatives = [d for d in candidates if is_negative(d)]
    if not positives:
        return [], "no_positive"
    if len(negatives) < cfg.group_size - 1:
        return [], "few_negatives"
    rng = query_rng(cfg.seed, query_id)
    order = rng.permutation(len(positives))
    groups = []
    for i in order[: cfg.groups_per_query]:
        picked = rng.choice(len(negatives), size=cfg.group_size - 1, replace=False)
        groups.append([positives[i], *(negatives[j] for j in picked)])
    return groups, None


def build_groups(cfg: RunConfig, out_dir: str | Path) -> GroupsResult:
    """Sample training groups for every dataset in ``cfg.data.train`` (see the module docstring)."""
    out_dir = Path(out_dir)
    stats = GroupStats()
    rows: dict[str, list] = {name: [] for name in SCHEMA.names}
    for collection, query_id, query, groups in sample_groups(cfg, stats):
        for doc_ids in groups:
            rows["query_id"].append(query_id)
            rows["query"].append(query)
            rows["doc_ids"].append(doc_ids)
            rows["docs"].append(collection.doc_texts(doc_ids))
            rows["group_id"].append(len(rows["group_id"]))
            rows["dataset"].append(collection.name)

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / GROUPS_FILE
    write_parquet(path, pa.Table.from_pydict(rows, schema=SCHEMA))
    write_json(out_dir / STATS_FILE, stats.to_dict())
    return GroupsResult(path=path, stats=stats)


def sample_groups(
    cfg: RunConfig, stats: GroupStats
) -> Iterator[tuple[Collection, str, str, list[list[str]]]]:
    """(collection, query_id, query text, groups of doc ids) for each query of ``cfg.data.train``
    that gives groups, in file order, counting every query (and skip) in `stats`. The one walk
    over the data that ``build_groups`` and the dry run's count (``study.forecast.count_groups``)
    both take: same collections (``data.duplicate_run_entries`` included), same held-out
    queries, same ``max_queries`` budget, and the same error when no query gives a group.
    Reads no document text."""
    budget = cfg.groups.max_queries
    for name in cfg.data.train:
        if budget is not None and stats.queries_seen >= budget:
            break
        collection = open_collection(
            name,
            root=cfg.data.root,
            split=cfg.data.train_split,
            first_stage=cfg.data.first_stage,
            duplicates=cfg.data.duplicate_run_entries,
        )
        held_out = cfg.data.validation_ids(name, list(collection.queries))
        if held_out:
            stats.validation_ids[name] = sorted(held_out)
            stats.queries_held_out += len(held_out)
        yield from _dataset_groups(cfg.groups, collection, stats, budget, held_out)
    log.info("training groups: %s", stats.summary())
    if stats.groups_written == 0:
        raise DataError(
            f"no training groups from {list(cfg.data.train)} (split {cfg.data.train_split!r}, "
            f"first stage {cfg.data.first_stage!r}): {stats.summary()}; check groups.positive_min_label, "
            "groups.depth and groups.group_size against the data"
        )


def _dataset_groups(
    cfg: GroupsConfig,
    collection: Collection,
    stats: GroupStats,
    budget: int | None,
    held_out: set[str],
) -> Iterator[tuple[Collection, str, str, list[list[str]]]]:
    run = collection.run
    stats.run_duplicates_dropped += collection.run_duplicates
    without_text = collection.queries_without_text
    if without_text:
        stats.queries_without_text += len(without_text)
        stats.without_text_ids[collection.name] = without_text
        log.warning(
            "%s: %d judged or retrieved queries have no text in the queries file, so they give no "
            "training groups, e.g. %s; add them to queries.jsonl",
            collection.name, len(without_text), without_text[:5],
        )  # fmt: skip
    for query_id, query in collection.queries.items():
        if query_id in held_out:
            continue
        if budget is not None and stats.queries_seen >= budget:
            return
        stats.queries_seen += 1
        candidates = [doc_id for doc_id, _ in run.get(query_id, [])]
        groups, skipped = sample_query_groups(cfg, query_id, candidates, collection.qrels.get(query_id, {}))
        if skipped == "no_positive":
            stats.queries_without_positive += 1
            stats.without_positive_ids.setdefault(collection.name, []).append(query_id)
            continue
        if skipped == "few_negatives":
            stats.queries_without_enough_negatives += 1
            stats.without_enough_negatives_ids.setdefault(collection.name, []).append(query_id)
            continue
        stats.queries_with_groups += 1
        stats.groups_written += len(groups)
        yield collection, query_id, query, groups
