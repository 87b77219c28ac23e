"""Evaluate a saved reranker (or the first stage itself) on named suites.

``evaluate(model, suites, *, depth, batch_size, out_dir, root)`` writes, per suite,
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
scores 0 (see ``metrics.py``). ``model=None`` evaluates the first-stage run itself, so the
BM25 figures in ``data/README.md`` can be checked.

The ``validation`` suite needs ``data`` (the run's ``DataConfig``): it reranks the queries that
``data.validation`` held out of each training dataset, from that dataset's own first stage
(query ids prefixed ``<dataset>:`` when ``data.train`` names several datasets). ``data`` also
says how repeated run entries are handled (``data.duplicate_run_entries``; default dedupe).

A suite is reranked in process, or, when ``evaluate`` is given a ``pool`` and the suite has at
least ``pool_min_pairs`` pairs, by the teacher scoring job (``rerank_ray.teacher.score``) with
the model as a cross-encoder teacher: a Ray Data actor pool on CPUs or GPUs, whose score shards
(``<out_dir>/scores/<suite>/``) make an interrupted evaluation resume where it stopped. Both
paths rank the same scores the same way (``rerank.ranked``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rerank_ray.config import DataConfig, EvalConfig
from rerank_ray.data.datasets import Collection, open_collection
from rerank_ray.evaluation.metrics import evaluate_run, mlflow_key, query_coverage
from rerank_ray.evaluation.rerank import (
    ScoreFn,
    candidates,
    first_stage,
    ranked,
    rerank,
    with_first_stage_tail,
    write_trec_run,
)
from rerank_ray.evaluation.suites import Suite, get_suite
from rerank_ray.io import atomic_path, write_json
from rerank_ray.teacher.config import ScoringConfig, TeacherModel
from rerank_ray.teacher.score import torch_threads

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger("rerank_ray.evaluation")

METRICS_FILE = "metrics.json"


@dataclass
class EvalResult:
    # mlflow_key(suite, measure) -> value: what is logged to MLflow / reported to Ray Tune.
    metrics: dict[str, float]
    # suite -> {display measure name: value}
    suites: dict[str, dict[str, float]] = field(default_factory=dict)
    out_dir: Path | None = None


# Suites with at least this many (query, document) pairs are reranked as a Ray Data job when
# evaluate() is given a pool; smaller ones stay in process, where starting actors costs more than
# it saves (dl19 at depth 100 is 4,300 pairs; msmarco-dev-small at depth 1,000 is 7 million).
POOL_MIN_PAIRS = 20_000

RerankSuite = Callable[[Collection, int, str], dict[str, list[tuple[str, float]]]]


def evaluate(
    model: str | Path | TeacherModel | None,
    suites: Sequence[str],
    *,
    depth: int | None = None,
    batch_size: int = 64,
    out_dir: str | Path,
    root: str | Path | None = None,
    tag: str | None = None,
    run_files: Mapping[str, str | Path] | None = None,
    data: DataConfig | None = None,
    suites_defined: Mapping[str, Suite] | None = None,
    pool: ScoringConfig | None = None,
    pool_min_pairs: int = POOL_MIN_PAIRS,
) -> EvalResult:
    """Rerank each suite with `model`: the reranker saved at a path, a teacher (a bi-encoder,
    or a cross-encoder teacher's saved path), or None (no reranking: the first stage).

    `depth` None = each suite's own depth. `tag` names the run in the TREC files (default: the
    model folder's name, or the first stage's). `run_files` maps a suite to a TREC run that
    replaces its first stage (absolute, or relative to `root`): the suite's own ``run_file``
    otherwise. With `pool`, a suite of at least `pool_min_pairs` pairs is scored by the teacher
    scoring job (``teacher.score.score_pairs``: an actor pool laid out by `pool`, resumable from
    ``<out_dir>/scores/<suite>/``); smaller suites, and all of them without `pool`, in process.
    A teacher that is a saved reranker is evaluated as that folder; any other teacher
    (``TeacherModel``: a bi-encoder) is scored in process, each suite's unique pairs in one
    ``TeacherScorer`` call (forward passes of `batch_size` pairs).
    `data` (the run's ``DataConfig``) gives the validation suite's held-out queries and
    ``data.duplicate_run_entries`` (see ``open_collection``); None = no validation suite, dedupe.
    `suites_defined` adds a config's own suites to the built-in ones."""
    rerank_suite = None
    model_path = None
    if isinstance(model, TeacherModel) and model.saved_reranker() is not None:
        model = model.saved_reranker()
    if isinstance(model, TeacherModel):
        rerank_suite = _teacher_reranker(model, batch_size)
        model_path, tag = model.path, tag or Path(model.path).name
    elif model is not None:
        model_path = model.path if isinstance(model, TeacherModel) else str(model)
        rerank_suite = _model_reranker(Path(model_path), batch_size, Path(out_dir), pool, pool_min_pairs)
        tag = tag or Path(model_path).name
    return _evaluate_runs(
        rerank_suite,
        suites,
        depth=depth,
        out_dir=out_dir,
        root=root,
        tag=tag,
        model_path=model_path,
        run_files=run_files,
        data=data,
        suites_defined=suites_defined,
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
    suites_defined: Mapping[str, Suite] | None = None,
) -> EvalResult:
    """:func:`evaluate` for any ``score_fn(queries, docs) -> scores`` (None: the first stage)."""
    rerank_suite = None
    if score_fn is not None:

        def rerank_suite(collection: Collection, cut: int, name: str) -> dict[str, list[tuple[str, float]]]:
            return rerank(score_fn, collection, cut, batch_size, desc=f"rerank {name}")

    return _evaluate_runs(
        rerank_suite,
        suites,
        depth=depth,
        out_dir=out_dir,
        root=root,
        tag=tag,
        model_path=model_path,
        run_files=run_files,
        data=data,
        suites_defined=suites_defined,
    )


def pool_options(eval_cfg: EvalConfig) -> dict[str, Any]:
    """:func:`evaluate`'s ``pool`` and ``pool_min_pairs`` from the ``eval:`` config section."""
    if eval_cfg.pool_min_pairs is None:
        return {}
    pool = ScoringConfig(
        actors=eval_cfg.actors,
        cpus_per_actor=eval_cfg.cpus_per_actor,
        gpus_per_actor=eval_cfg.gpus_per_actor,
        batch_size=eval_cfg.batch_size,
    )
    return {"pool": pool, "pool_min_pairs": eval_cfg.pool_min_pairs}


def _model_reranker(
    model_path: Path, batch_size: int, out_dir: Path, pool: ScoringConfig | None, pool_min_pairs: int
) -> RerankSuite:
    """Reranks one suite with the saved model: on the pool when it is large enough, else in
    process (the model is loaded on first use; torch threads = this process's CPU budget)."""
    loaded = []

    def rerank_suite(collection: Collection, cut: int, name: str) -> dict[str, list[tuple[str, float]]]:
        pairs = candidates(collection, cut)
        if pool is not None and len(pairs) >= pool_min_pairs:
            return _rerank_on_pool(model_path, collection, pairs, out_dir / "scores" / name, pool)
        import torch

        if not loaded:
            from rerank_ray.models import load_reranker

            torch.set_num_threads(torch_threads())
            # On a GPU, decoder/recurrent models score in bf16 (model.dtype, default auto).
            loaded.append(load_reranker(str(model_path), inference=True))
        reranker = loaded[0]

        def score_fn(queries: list[str], docs: list[str]) -> list[float]:
            # Under bf16 autocast on CUDA, or on CPU too with model.autocast: bf16.
            return reranker.score(queries, docs, batch_size)

        return rerank(score_fn, collection, cut, batch_size, desc=f"rerank {name}")

    return rerank_suite


def _teacher_reranker(teacher: TeacherModel, batch_size: int) -> RerankSuite:
    """Reranks one suite with a teacher: the suite's unique pairs in ONE ``TeacherScorer`` call
    (a bi-encoder then encodes each distinct document and query once per suite; the scorer is
    loaded on first use; torch threads = this process's CPU budget)."""
    loaded = []

    def rerank_suite(collection: Collection, cut: int, name: str) -> dict[str, list[tuple[str, float]]]:
        from rerank_ray.teacher.score import TeacherScorer

        if not loaded:
            loaded.append(TeacherScorer(teacher.model_dump(), batch_size=batch_size, threads=torch_threads()))
        pairs = candidates(collection, cut)
        frame = _pair_frame(collection, pairs)
        log.info(
            "rerank %s: %d unique pairs with the %s %s",
            name,
            len(frame),
            teacher.kind.replace("_", "-"),
            teacher.path,
        )
        scores = loaded[0](frame)
        if not np.isfinite(scores["score"]).all():
            raise ValueError(f"the {teacher.kind} teacher {teacher.path} gave NaN or inf scores on {name}")
        return _ranked_by_lookup(pairs, scores)

    return rerank_suite


def _rerank_on_pool(
    model_path: Path,
    collection: Collection,
    pairs: list[tuple[str, str]],
    scores_dir: Path,
    pool: ScoringConfig,
) -> dict[str, list[tuple[str, float]]]:
    """Score `pairs` with the teacher scoring job (the model as a cross-encoder teacher) and
    rank them as :func:`rerank` would."""
    import pandas as pd

    from rerank_ray.teacher.provenance import PAIR_COLUMNS
    from rerank_ray.teacher.score import score_pairs

    frame = _pair_frame(collection, pairs)
    teacher = TeacherModel(kind="cross_encoder", path=str(model_path.resolve()))
    # evaluate() already chose the pool for this suite (its own pool_min_pairs).
    pool = pool.model_copy(update={"pool_min_pairs": 0})
    result = score_pairs(frame[PAIR_COLUMNS], teacher, scores_dir, scoring=pool, source=collection.name)
    return _ranked_by_lookup(pairs, pd.read_parquet(result.path))


def _pair_frame(collection: Collection, pairs: list[tuple[str, str]]) -> pd.DataFrame:
    """The unique `pairs` (first occurrence order) with their texts: ``query_id, doc_id, query,
    doc``, what a ``TeacherScorer`` and the scoring job take."""
    import pandas as pd

    unique = list(dict.fromkeys(pairs))
    frame = pd.DataFrame(unique, columns=["query_id", "doc_id"])
    frame["query"] = [collection.queries[q] for q, _ in unique]
    frame["doc"] = collection.doc_texts([d for _, d in unique])
    return frame


def _ranked_by_lookup(
    pairs: list[tuple[str, str]], scores: pd.DataFrame
) -> dict[str, list[tuple[str, float]]]:
    """`pairs` ranked (``rerank.ranked``) by the ``score`` of their row in `scores`
    (``query_id, doc_id, score``)."""
    lookup = dict(zip(zip(scores["query_id"], scores["doc_id"], strict=True), scores["score"], strict=True))
    return ranked(pairs, [float(lookup[pair]) for pair in pairs])


def _evaluate_runs(
    rerank_suite: RerankSuite | None,
    suites: Sequence[str],
    *,
    depth: int | None,
    out_dir: str | Path,
    root: str | Path | None,
    tag: str | None,
    model_path: str | None,
    run_files: Mapping[str, str | Path] | None,
    data: DataConfig | None,
    suites_defined: Mapping[str, Suite] | None,
) -> EvalResult:
    """Rerank (or, with None, cut the first stage of) each suite; write runs and metrics."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = EvalResult(metrics={}, out_dir=out_dir)
    report: dict[str, dict] = {}
    for name in suites:
        suite = get_suite(name, suites_defined)
        cut = depth or suite.depth
        collections = _collections(suite, (run_files or {}).get(name, suite.run_file), root, data)
        run, qrels = _suite_run(rerank_suite, name, collections, cut)
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
            "run_file": None if collections[0].run_file is None else str(collections[0].run_file),
            "depth": cut,
            "queries": len(per_query),
            "judged_queries_without_candidates": coverage.without_candidates,
            "run_queries_without_judgments": coverage.unjudged,
            "run_duplicates_dropped": collections[0].run_duplicates,
            "measures": aggregate,
        }
        log.info("%s (%d queries, depth %d): %s", name, len(per_query), cut, ", ".join(f"{m} {v:.4f}" for m, v in aggregate.items()))  # fmt: skip
        if coverage.without_candidates or coverage.unjudged:
            log.warning("%s: %s", name, coverage.summary())
    write_json(
        out_dir / METRICS_FILE, {"model_path": model_path, "metrics": result.metrics, "suites": report}
    )
    return result


def _suite_run(
    rerank_suite: RerankSuite | None, name: str, collections: list[Collection] | list[HeldOut], cut: int
) -> tuple[dict[str, list[tuple[str, float]]], dict[str, dict[str, int]]]:
    """The run (reranked top `cut`, then the first-stage tail; or the first stage itself) and
    the qrels of suite `name` over its collections; query ids are prefixed ``<collection>:``
    when there are several (the validation suite of several training datasets)."""
    run: dict[str, list[tuple[str, float]]] = {}
    qrels: dict[str, dict[str, int]] = {}
    several = len(collections) > 1
    for collection in collections:
        prefix = f"{collection.name}:" if several else ""
        if rerank_suite is None:
            part = first_stage(collection)  # nothing reranked: the whole list
        else:
            label = f"{name}-{collection.name}" if several else name
            part = with_first_stage_tail(rerank_suite(collection, cut, label), collection)
        run.update({prefix + q: ranked for q, ranked in part.items()})
        qrels.update({prefix + q: judged for q, judged in collection.qrels.items()})
    return run, qrels


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
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write("query_id\tmeasure\tvalue\n")
        for query_id in sorted(per_query):
            for measure in measures:
                f.write(f"{query_id}\t{measure}\t{per_query[query_id][measure]!r}\n")
