"""open_collection: local BEIR-like folders through ir_datasets, ir_datasets ids, bad input."""

from __future__ import annotations

import json
import time
from pathlib import Path

import ir_datasets
import pytest

from rerank_ray.config import default_data_root
from rerank_ray.data.datasets import DataError, open_collection, resolve_dataset_id

ROOT = default_data_root()


def test_tiny_dl19_parts():
    c = open_collection("fixtures/tiny-dl19", split="test", first_stage="bm25-top20")
    assert c.name == "fixtures/tiny-dl19"
    assert c.dataset_id == "rerank-ray/fixtures/tiny-dl19/test/bm25-top20"
    assert sorted(c.queries) == ["19335", "47923", "87181", "87452"]
    assert sum(len(j) for j in c.qrels.values()) == 73
    assert all(isinstance(label, int) for j in c.qrels.values() for label in j.values())
    for ranked in c.run.values():
        assert len(ranked) == 20
        scores = [s for _, s in ranked]
        assert scores == sorted(scores, reverse=True)
    first = next(iter(c.run.values()))[0][0]
    assert c.doc_text(first) and c.docs_store.get(first).doc_id == first


def test_registered_with_ir_datasets():
    open_collection("fixtures/tiny-dl19", split="test", first_stage="bm25-top20")
    base = ir_datasets.load("rerank-ray/fixtures/tiny-dl19/test")
    assert base.has_docs() and base.has_queries() and base.has_qrels() and not base.has_scoreddocs()
    assert ir_datasets.load("rerank-ray/fixtures/tiny-dl19/test/bm25-top20").has_scoreddocs()


def test_doc_text_joins_title_and_text():
    c = open_collection("fixtures/tiny-scifact", split="test", first_stage="bm25-top10")
    with open(ROOT / "fixtures/tiny-scifact/corpus.jsonl") as f:
        raw = json.loads(f.readline())
    assert raw["title"]
    assert c.doc_text(raw["_id"]) == f"{raw['title']} {raw['text']}"


def test_doc_text_omits_empty_title():
    c = open_collection("fixtures/tiny-dl19", split="test", first_stage="bm25-top20")
    with open(ROOT / "fixtures/tiny-dl19/corpus.jsonl") as f:
        raw = json.loads(f.readline())
    assert raw["title"] == ""
    assert c.doc_text(raw["_id"]) == raw["text"]


def test_queries_are_those_of_the_split():
    test = open_collection("fixtures/tiny-scifact", split="test", first_stage="bm25-top10")
    train = open_collection("fixtures/tiny-scifact", split="train", first_stage="bm25-top10")
    assert sorted(test.queries, key=int) == ["1", "3", "5", "13"]
    assert sorted(train.queries, key=int) == ["0", "2", "4", "6", "9", "10", "11", "12"]


def test_same_arguments_same_object():
    a = open_collection("fixtures/tiny-dl19", split="test", first_stage="bm25-top20")
    b = open_collection("fixtures/tiny-dl19", root=ROOT, split="test", first_stage="bm25-top20")
    assert a is b


def test_docstore_is_fast():
    c = open_collection("trec-dl-2020", split="test")
    doc_ids = [d for ranked in c.run.values() for d, _ in ranked]
    c.doc_texts(doc_ids[:1])  # builds the docstore once (shared by later processes)
    start = time.perf_counter()
    texts = c.doc_texts(doc_ids)
    assert len(texts) == 5400
    assert time.perf_counter() - start < 2.0


def test_ir_datasets_id_routes_without_download():
    name = "msmarco-passage/trec-dl-2019/judged"
    assert resolve_dataset_id(name, root=ROOT, split="test", first_stage="bm25-top100") == name
    c = open_collection(name, root=ROOT)  # parts load lazily: nothing is downloaded here
    assert c.dataset_id == name and c.name == name


def test_unknown_name_lists_local_folders():
    with pytest.raises(DataError, match="trec-dl-2019") as err:
        open_collection("trec-dl-2018", root=ROOT)
    assert "ir_datasets id" in str(err.value)


def test_missing_run_lists_runs():
    with pytest.raises(DataError, match=r"bm25-top20\.test\.run"):
        open_collection("fixtures/tiny-dl19", split="test", first_stage="bm25-top100")


def test_missing_split_lists_splits():
    with pytest.raises(DataError, match=r"splits here: \['test'\]"):
        open_collection("fixtures/tiny-dl19", split="dev", first_stage="bm25-top20")


# ---------------------------------------------------------------------------------------------
# Malformed input: DataError naming the file and the 1-based line.

GOOD = {
    "corpus.jsonl": '{"_id": "d1", "title": "", "text": "one"}\n{"_id": "d2", "title": "T", "text": "two"}\n',
    "queries.jsonl": '{"_id": "q1", "text": "query one"}\n',
    "qrels/test.tsv": "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t0\n",
    "bm25.test.run": "q1 Q0 d1 1 2.0 bm25\nq1 Q0 d2 2 1.0 bm25\n",
}


def _folder(tmp_path: Path, monkeypatch) -> tuple[Path, str]:
    # A fresh ir_datasets home keeps test docstores out of the shared cache.
    monkeypatch.setenv("IR_DATASETS_HOME", str(tmp_path / "irds"))
    name = f"c-{tmp_path.name}"  # ids are process-global: one folder name per test
    for rel, text in GOOD.items():
        path = tmp_path / "root" / name / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path / "root", name


def _open(root: Path, name: str):
    return open_collection(name, root=root, split="test", first_stage="bm25")


def test_good_folder(tmp_path, monkeypatch):
    c = _open(*_folder(tmp_path, monkeypatch))
    assert c.queries == {"q1": "query one"}
    assert c.qrels == {"q1": {"d1": 1, "d2": 0}}
    assert c.run == {"q1": [("d1", 2.0), ("d2", 1.0)]}
    assert c.doc_texts(["d2", "d1"]) == ["T two", "one"]
    with pytest.raises(DataError, match="not in the corpus"):
        c.doc_text("d9")


@pytest.mark.parametrize(
    "file, text, line, fragment",
    [
        ("qrels/test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\n", 3, "3 tab-separated columns"),
        ("qrels/test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\thigh\n", 2, "must be an integer"),
        ("qrels/test.tsv", "q1\td1\t1\n", 1, "expected the header"),
        ("bm25.test.run", "q1 Q0 d1 1 2.0 bm25\nq1 Q0 d2 2 1.0\n", 2, "expected 6 columns"),
        ("bm25.test.run", "q1 Q0 d1 first 2.0 bm25\n", 1, "rank must be an integer"),
        ("queries.jsonl", '{"_id": "q1", "text": "a"}\n\n{"_id": "q2", "text": \n', 3, "not valid JSON"),
        ("corpus.jsonl", '{"_id": "d1", "text": "one"}\n{"_id": "d2"}\n', 2, "missing field"),
        ("corpus.jsonl", '{"_id": "d1", "text": "one"}\n["d2", "two"]\n', 2, "expected a JSON object"),
    ],
)
def test_malformed_lines(tmp_path, monkeypatch, file, text, line, fragment):
    root, name = _folder(tmp_path, monkeypatch)
    path = root / name / file
    path.write_text(text)
    c = _open(root, name)
    with pytest.raises(DataError) as err:
        c.queries, c.qrels, c.run, c.doc_text("d1")  # noqa: B018 (each part loads on access)
    message = str(err.value)
    assert f"{path.resolve()}:{line}:" in message, message
    assert fragment in message


def test_a_new_docstore_is_built_by_one_process_while_the_others_wait(tmp_path, monkeypatch):
    """ir_datasets builds a docstore on first use without a lock: two processes opening a new
    corpus at once would both fill it. `built_once` takes `<store>.lock` first; while another
    holder has it, the store is neither built nor read, and afterwards it holds each doc once."""
    import fcntl
    import threading

    c = _open(*_folder(tmp_path, monkeypatch))
    lock = Path(f"{c.dataset.docs_store().path}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    texts: list[list[str]] = []
    with open(lock, "a") as other_process:  # flock is per open file: a thread waits like a process
        fcntl.flock(other_process, fcntl.LOCK_EX)
        reader = threading.Thread(target=lambda: texts.append(c.doc_texts(["d2", "d1"])))
        reader.start()
        reader.join(timeout=2.0)
        assert reader.is_alive() and not texts, "the docstore was built while another process held its lock"
        assert not c.dataset.docs_store().built()
    reader.join(timeout=60)
    assert texts == [["T two", "one"]]
    assert c.docs_store.count() == 2


def test_the_repository_carries_its_data_as_the_default_root(monkeypatch, tmp_path):
    """A clone anywhere (nothing beside it) finds its data; $RERANK_RAY_DATA_ROOT still wins."""
    from rerank_ray.config import PROJECT_ROOT, default_data_root

    monkeypatch.delenv("RERANK_RAY_DATA_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    root = default_data_root()
    assert root == PROJECT_ROOT / "data"
    for folder in (
        "trec-dl-2019",
        "trec-dl-2020",
        "trec-dl-2021",
        "scifact",
        "cranfield",
        "fixtures/tiny-dl19",
    ):
        assert (root / folder / "corpus.jsonl").is_file(), folder
    assert "Terms" in (root / "README.md").read_text()  # provenance and licences travel with it
    monkeypatch.setenv("RERANK_RAY_DATA_ROOT", str(tmp_path))
    assert default_data_root() == tmp_path
