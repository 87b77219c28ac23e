"""Named benchmark suites: which collection, which first-stage run, how deep, which measures.

TREC DL judges on a 0-3 scale and counts a passage as relevant for binary measures from label 2
up, hence ``rel=2`` for RR and recall; nDCG uses the graded labels as gains. The BEIR-style
suites use the defaults (relevant = label >= 1). The BM25 nDCG@10 of each full suite's
first-stage run is recorded in ``data/README.md`` (dl19 0.5058, scifact 0.6767,
cranfield 0.3518) and checked by the tests.

The paper's benchmarks that are not in ``data/`` are ir_datasets ids, valid in any
config but readable only where ir_datasets has downloaded them (opening one offline raises a
``DataError`` that names the id and how to fetch it):

- ``validation``: the training queries held out by ``data.validation`` (never in a training
  group), reranked from the training data's own first stage; the suite to choose schedules on.

- ``msmarco-dev-small``: ``msmarco-passage/dev/small`` (6,980 queries, binary qrels), reranking
  the id's own scoreddocs (the official BM25 top 1000); RR@10 is the official measure, R@1000
  the first stage's ceiling.
- ``beir-*``: the BEIR subset. ir_datasets ships no first-stage run for BEIR, so each suite
  names a TREC run file (``run_file``, relative to the data root unless absolute; a study can
  point elsewhere with ``eval.run_files``), for example Pyserini's BM25 flat runs.

A config may define more suites (``eval.suites_defined``: a name -> dataset, split, first stage
or run file, depth, measures and relevance threshold); they are used by name like these.
:func:`known_suites` is the registry a config's names are checked against: the built-in
suites plus the defined ones, which may not reuse a built-in name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

DL_MEASURES = ("nDCG@10", "RR(rel=2)@10", "R(rel=2)@100")
BEIR_MEASURES = ("nDCG@10", "RR@10", "R@100")
MSMARCO_MEASURES = ("RR@10", "nDCG@10", "R@1000")


@dataclass(frozen=True)
class Suite:
    dataset: str  # a folder under the data root, or an ir_datasets id
    split: str  # for a folder; an ir_datasets id already names its split
    first_stage: str  # the run's name: ``<first_stage>.<split>.run`` in a folder
    depth: int  # rerank this many first-stage candidates; the rest follow in first-stage order
    measures: tuple[str, ...]
    # A TREC run to rerank instead of the dataset's scoreddocs: absolute, or relative to the
    # data root. Needed for ir_datasets ids without scoreddocs (BEIR).
    run_file: str | None = None
    # The `validation` suite: the training queries held out by ``data.validation``; its
    # collections are the run's ``data.train`` (split ``data.train_split``, first stage
    # ``data.first_stage``), so `dataset`, `split` and `first_stage` are empty here.
    held_out: bool = False


def beir(dataset_id: str) -> Suite:
    """A BEIR subset suite: the ir_datasets id, reranking ``runs/<id with - for />.bm25.run``."""
    run = "runs/" + dataset_id.replace("/", "-") + ".bm25.run"
    return Suite(dataset_id, "test", "bm25", 100, BEIR_MEASURES, run_file=run)


SUITES: dict[str, Suite] = {
    "dl19": Suite("trec-dl-2019", "test", "bm25-top100", 100, DL_MEASURES),
    "dl20": Suite("trec-dl-2020", "test", "bm25-top100", 100, DL_MEASURES),
    "dl21": Suite("trec-dl-2021", "test", "bm25-top100", 100, DL_MEASURES),
    "scifact": Suite("scifact", "test", "bm25-top100", 100, BEIR_MEASURES),
    "cranfield": Suite("cranfield", "test", "bm25-top100", 100, BEIR_MEASURES),
    "tiny-dl19": Suite("fixtures/tiny-dl19", "test", "bm25-top20", 20, DL_MEASURES),
    "tiny-scifact": Suite("fixtures/tiny-scifact", "test", "bm25-top10", 10, BEIR_MEASURES),
    "validation": Suite("", "", "", 100, BEIR_MEASURES, held_out=True),
    "msmarco-dev-small": Suite("msmarco-passage/dev/small", "dev", "bm25-top1000", 1000, MSMARCO_MEASURES),
    # The paper's BEIR subset (test splits; the ids without a split suffix have only one).
    "beir-trec-covid": beir("beir/trec-covid"),
    "beir-nfcorpus": beir("beir/nfcorpus/test"),
    "beir-fiqa": beir("beir/fiqa/test"),
    "beir-arguana": beir("beir/arguana"),
    "beir-scidocs": beir("beir/scidocs"),
    "beir-climate-fever": beir("beir/climate-fever"),
    "beir-dbpedia-entity": beir("beir/dbpedia-entity/test"),
    "beir-webis-touche2020": beir("beir/webis-touche2020/v2"),
}


def known_suites(defined: Mapping[str, Suite] | None = None) -> dict[str, Suite]:
    """The built-in suites plus `defined` (a config's ``eval.suites_defined``)."""
    clash = sorted(set(defined or {}) & set(SUITES))
    if clash:
        raise ValueError(f"suites_defined: {clash} are built-in suite names; give your suite another name")
    return {**SUITES, **(defined or {})}


def unknown_suites(names: Iterable[str], defined: Mapping[str, Suite] | None = None) -> str | None:
    """None when every name is a known suite, else a message naming the unknown ones and every
    known name (the check a config runs at load time)."""
    known = known_suites(defined)
    unknown = [n for n in names if n not in known]
    if not unknown:
        return None
    return (
        f"unknown evaluation suite(s) {unknown}; known suites: {', '.join(sorted(known))} "
        "(define your own under eval.suites_defined)"
    )


def get_suite(name: str, defined: Mapping[str, Suite] | None = None) -> Suite:
    problem = unknown_suites([name], defined)
    if problem:
        raise ValueError(problem)
    return known_suites(defined)[name]


def with_relevance(measures: Iterable[str], relevance: int) -> tuple[str, ...]:
    """`measures` with ``rel=relevance`` set on each binary measure that takes one and does not
    name it already (RR, R, P, AP, ...); graded measures (nDCG) keep their labels as gains.
    ``with_relevance(["nDCG@10", "RR@10"], 2) == ("nDCG@10", "RR(rel=2)@10")``."""
    import ir_measures

    out = []
    for name in measures:
        measure = ir_measures.parse_measure(name)
        if relevance != 1 and "rel" in measure.SUPPORTED_PARAMS and "rel" not in measure.params:
            measure = measure(rel=relevance)
        out.append(str(measure))
    return tuple(out)
