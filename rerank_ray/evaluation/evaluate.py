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
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rerank_ray.data.datasets import open_collection
from rerank_ray.evaluation.metrics import evaluate_run, mlflow_key, query_coverage
from rerank_ray.evaluation.rerank import ScoreFn, first_stage, rerank, with_first_stage_tail, write_trec_run
from rerank_ray.evaluation.suites import Suite, get_suite

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
    suites_defined: Mapping[str, Suite] | None = None,
    duplicate_run_entries: str = "dedupe",
) -> EvalResult:
    """Rerank each suite with the reranker saved at `model_path` (None: no reranking).

    `depth` None = each suite's own depth. `tag` names the run in the TREC files (default: the
    model folder's name, or the first stage's). `run_files` maps a suite to a TREC run that
    replaces its first stage (absolute, or relative to `root`): the suite's own ``run_file``
    otherwise. `duplicate_run_entries` is ``data.duplicate_run_entries`` (see ``open_collection``).
    `suites_defined` adds a config's own suites to the built-in ones."""
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
        suites_defined=suites_defined,
        duplicate_run_entries=duplicate_run_entries,
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
    suites_defined: Mapping[str, Suite] | None = None,
    duplicate_run_entries: str = "dedupe",
) -> EvalResult:
    """:func:`evaluate` for any ``score_fn(queries, docs) -> scores`` (None: the first stage)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = EvalResult(metrics={}, out_dir=out_dir)
    report: dict[str, dict] = {}
    for name in suites:
        suite = get_suite(name, suites_defined)
        cut = depth or suite.depth
        run_file = (run_files or {}).get(name, suite.run_file)
        collection = open_collection(
            suite.dataset,
            root=root,
            split=suite.split,
            first_stage=suite.first_stage,
            run_file=run_file,
            duplicates=duplicate_run_entries,
        )
        if score_fn is None:
            run = first_stage(collection)  # nothing reranked: the whole list as it is
        else:
            run = rerank(score_fn, collection, cut, batch_size, desc=f"rerank {name}")
            run = with_first_stage_tail(run, collection)
        write_trec_run(run, out_dir / f"{name}.run", tag or suite.first_stage)
        aggregate, per_query = evaluate_run(collection.qrels, run, suite.measures)
        coverage = query_coverage(collection.qrels, run)
        _write_per_query(per_query, list(aggregate), out_dir / f"{name}.per_query.tsv")
        result.suites[name] = aggregate
        result.metrics.update({mlflow_key(name, m): v for m, v in aggregate.items()})
        report[name] = {
            "dataset": suite.dataset,
            "split": suite.split,
            "first_stage": suite.first_stage,
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
    (out_dir / METRICS_FILE).write_text(json.dumps(payload, indent=2))
    return result


def _write_per_query(per_query: dict[str, dict[str, float]], measures: list[str], path: Path) -> None:
    with open(path, "w") as f:
        f.write("query_id\tmeasure\tvalue\n")
        for query_id in sorted(per_query):
            for measure in measures:
                f.write(f"{query_id}\t{measure}\t{per_query[query_id][measure]!r}\n")
