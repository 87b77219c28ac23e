"""Evaluate a saved reranker (or the first stage itself) on named suites.

``evaluate(model_path, suites, *, depth, batch_size, out_dir, root)`` writes, per suite,
``<out_dir>/<suite>.run`` (TREC run: the reranked top ``depth``, then the remaining first-stage
candidates in first-stage order) and ``<out_dir>/<suite>.per_query.tsv`` (``query_id measure
value`` with a header), and once ``<out_dir>/metrics.json``::

    {"model_path": ..., "metrics": {mlflow_key: value},
     "suites": {suite: {"dataset", "split", "first_stage", "depth", "queries",
                        "judged_queries_without_candidates", "run_queries_without_judgments",
                        "run_duplicates_dropped", "measures": {display name: value}}}}

Every measure is computed on that whole candidate list, so a measure deeper than ``depth``
(R@100 after reranking the top 10) keeps its name's meaning: the tail is the first stage's.
The metrics equal those of the written run file (ties: first-stage order, see ``rerank.py``).
``queries`` counts the judged queries the means are over; a judged query without candidates
scores 0 (see ``metrics.py``). ``model_path=None`` evaluates the first-stage run itself, so the
BM25 figures in ``../shared/data/README.md`` can be checked.

The ``validation`` suite needs ``data`` (the run's ``DataConfig``): it reranks the queries that
``data.validation`` held out of each training dataset, from that dataset's own first stage
(query ids prefixed ``<dataset>:`` when ``data.train`` names several datasets). ``data`` also
says how repeated run entries are handled (``data.duplicate_run_entries``; default dedupe).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rerank_ray.config import DataConfig
from rerank_ray.data.datasets import Collection, open_collection
from rerank_ray.evaluation.metrics import evaluate_run, mlflow_key, query_coverage
from rerank_ray.evaluation.rerank import ScoreFn, first_stage, rerank, with_first_stage_tail, write_trec_run
from rerank_ray.evaluation.suites import Suite, get_suite
from rerank_ray.io import write_json

log = logging.getLogger("rerank_ray.evaluation")

METRICS_FILE = "metrics.json"


@dataclass
class EvalResult:
    # mlflow_key(suite, measure) -> value: what is logged to MLflow / reported to Ray Tune.
    metrics: dict[str, float]
    # suite -> {display measure name: value}
    suites: dict[str, dict[str, float]] = field(default_factory=dict)
    out_dir: Path | None = None


def evaluate(
    model_path: str | Path | None,
    suites: Sequence[str],
    *,
    depth: int | None = None,
    batch_size: int = 64,
    out_dir: str | Path,
    root: str | Path | None = None,
    tag: str | None = None,
    run_files: Mapping[str, str | Path] | None = None,
    data: DataConfig | None = None,
) -> EvalResult:
    """Rerank each suite with the reranker saved at `model_path` (None: no reranking).

    `depth` None = each suite's own depth. `tag` names the run in the TREC files (default: the
    model folder's name, or the first stage's). `run_files` maps a suite to a TREC run that
    replaces its first stage (absolute, or relative to `root`): the suite's own ``run_file``
    otherwise. `data` (the run's ``DataConfig``) gives the validation suite's held-out queries and
    ``data.duplicate_run_entries`` (see ``open_collection``); None = no validation suite, dedupe."""
    score_fn: ScoreFn | None = None
    if model_path is not None:
        from rerank_ray.models import load_reranker

        # On a GPU, decoder/recurrent models score in bf16 (model.dtype, default auto).
        reranker = load_reranker(model_path, inference=True)

        def score_fn(queries: list[str], docs: list[str]) -> list[float]:
            return reranker.score(queries, docs, batch_size)

        tag = tag or Path(model_path).name
    return evaluate_scorer(
        score_fn,
        suites,
        depth=depth,
        batch_size=batch_size,
        out_dir=out_dir,
        root=root,
        tag=tag,
        model_path=None if model_path is None else str(model_path),
        run_files=run_files,
        data=data,
    )


def evaluate_scorer(
    score_fn: ScoreFn | None,
    suites: Sequence[str],
    *,
    depth: int | None = None,
    batch_size: int = 64,
    out_dir: str | Path,
    root: str | Path | None = None,
    tag: str | None = None,
    model_path: str | None = None,
    run_files: Mapping[str, str | Path] | None = None,
    data: DataConfig | None = None,
) -> EvalResult:
    """:func:`evaluate` for any ``score_fn(queries, docs) -> scores`` (None: the first stage)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = EvalResult(metrics={}, out_dir=out_dir)
    report: dict[str, dict] = {}
    for name in suites:
        suite = get_suite(name)
        cut = depth or suite.depth
        collections = _collections(suite, (run_files or {}).get(name, suite.run_file), root, data)
        run: dict[str, list[tuple[str, float]]] = {}
        qrels: dict[str, dict[str, int]] = {}
        for collection in collections:
            prefix = f"{collection.name}:" if len(collections) > 1 else ""
            if score_fn is None:
                part = first_stage(collection)  # nothing reranked: the whole list
            else:
                part = rerank(score_fn, collection, cut, batch_size, desc=f"rerank {name}")
                part = with_first_stage_tail(part, collection)
            run.update({prefix + q: ranked for q, ranked in part.items()})
            qrels.update({prefix + q: judged for q, judged in collection.qrels.items()})
        collection = collections[0]
        write_trec_run(run, out_dir / f"{name}.run", tag or suite.first_stage or "validation")
        aggregate, per_query = evaluate_run(qrels, run, suite.measures)
        coverage = query_coverage(qrels, run)
        _write_per_query(per_query, list(aggregate), out_dir / f"{name}.per_query.tsv")
        result.suites[name] = aggregate
        result.metrics.update({mlflow_key(name, m): v for m, v in aggregate.items()})
        report[name] = {
            "dataset": suite.dataset or ",".join(c.name for c in collections),
            "split": suite.split or (data.train_split if data else ""),
            "first_stage": suite.first_stage or (data.first_stage if data else ""),
            "run_file": None if collection.run_file is None else str(collection.run_file),
            "depth": cut,
            "queries": len(per_query),
            "judged_queries_without_candidates": coverage.without_candidates,
            "run_queries_without_judgments": coverage.unjudged,
            "run_duplicates_dropped": collection.run_duplicates,
            "measures": aggregate,
        }
        log.info(
            "%s (%d queries, depth %d): %s",
            name,
            len(per_query),
            cut,
            ", ".join(f"{m} {v:.4f}" for m, v in aggregate.items()),
        )
        if coverage.without_candidates or coverage.unjudged:
            log.warning("%s: %s", name, coverage.summary())
    payload = {"model_path": model_path, "metrics": result.metrics, "suites": report}
    write_json(out_dir / METRICS_FILE, payload)
    return result


def _collections(
    suite: Suite, run_file: str | Path | None, root: str | Path | None, data: DataConfig | None
) -> list[Collection] | list[HeldOut]:
    """What `suite` reranks: its collection, or the validation queries of the training data."""
    if suite.held_out:
        return validation_collections(data)
    return [
        open_collection(
            suite.dataset,
            root=root,
            split=suite.split,
            first_stage=suite.first_stage,
            run_file=run_file,
            duplicates=data.duplicate_run_entries if data is not None else "dedupe",
        )
    ]


class HeldOut:
    """The validation queries of one training collection: what ``rerank`` and ``first_stage``
    read (``name``, ``queries``, ``qrels``, ``run``, ``doc_texts``), restricted to `query_ids`."""

    def __init__(self, collection: Collection, query_ids: set[str]) -> None:
        self.name = collection.name
        self.run_file = collection.run_file
        self.run_duplicates = collection.run_duplicates
        self.queries = {q: t for q, t in collection.queries.items() if q in query_ids}
        self.qrels = {q: j for q, j in collection.qrels.items() if q in query_ids}
        self.run = {q: r for q, r in collection.run.items() if q in query_ids}
        self.doc_texts = collection.doc_texts


def validation_collections(data: DataConfig | None) -> list[HeldOut]:
    """The held-out validation queries of each dataset in ``data.train`` (``data.validation``)."""
    if data is None or data.validation is None:
        raise ValueError(
            "the validation suite evaluates the queries held out by data.validation; set "
            "data.validation (a query fraction or a list of query ids), or drop the suite"
        )
    parts = []
    for name in data.train:
        collection = open_collection(
            name,
            root=data.root,
            split=data.train_split,
            first_stage=data.first_stage,
            duplicates=data.duplicate_run_entries,
        )
        held_out = data.validation_ids(name, list(collection.queries))
        if held_out:
            parts.append(HeldOut(collection, held_out))
    if not parts:
        raise ValueError(f"data.validation={data.validation!r} holds out no query of {list(data.train)}")
    return parts


def _write_per_query(per_query: dict[str, dict[str, float]], measures: list[str], path: Path) -> None:
    with open(path, "w") as f:
        f.write("query_id\tmeasure\tvalue\n")
        for query_id in sorted(per_query):
            for measure in measures:
                f.write(f"{query_id}\t{measure}\t{per_query[query_id][measure]!r}\n")
