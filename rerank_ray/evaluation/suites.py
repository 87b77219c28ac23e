"""Named benchmark suites: which collection, which first-stage run, how deep, which measures.

TREC DL judges on a 0-3 scale and counts a passage as relevant for binary measures from label 2
up, hence ``rel=2`` for RR and recall; nDCG uses the graded labels as gains. The BEIR-style
suites use the defaults (relevant = label >= 1). The BM25 nDCG@10 of each full suite's
first-stage run is recorded in ``../shared/data/README.md`` (dl19 0.5058, scifact 0.6767,
cranfield 0.3518) and checked by the tests.
"""

from __future__ import annotations

from dataclasses import dataclass

DL_MEASURES = ("nDCG@10", "RR(rel=2)@10", "R(rel=2)@100")
BEIR_MEASURES = ("nDCG@10", "RR@10", "R@100")


@dataclass(frozen=True)
class Suite:
    dataset: str  # a folder under the data root, or an ir_datasets id
    split: str
    first_stage: str
    depth: int  # rerank this many first-stage candidates (and keep only them)
    measures: tuple[str, ...]


SUITES: dict[str, Suite] = {
    "dl19": Suite("trec-dl-2019", "test", "bm25-top100", 100, DL_MEASURES),
    "dl20": Suite("trec-dl-2020", "test", "bm25-top100", 100, DL_MEASURES),
    "dl21": Suite("trec-dl-2021", "test", "bm25-top100", 100, DL_MEASURES),
    "scifact": Suite("scifact", "test", "bm25-top100", 100, BEIR_MEASURES),
    "cranfield": Suite("cranfield", "test", "bm25-top100", 100, BEIR_MEASURES),
    "tiny-dl19": Suite("fixtures/tiny-dl19", "test", "bm25-top20", 20, DL_MEASURES),
    "tiny-scifact": Suite("fixtures/tiny-scifact", "test", "bm25-top10", 10, BEIR_MEASURES),
}


def get_suite(name: str) -> Suite:
    if name not in SUITES:
        raise ValueError(f"unknown evaluation suite {name!r}; known suites: {sorted(SUITES)}")
    return SUITES[name]
