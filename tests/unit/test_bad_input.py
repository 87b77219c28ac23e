"""Bad input at the boundary (issue 9, item 4): each case is refused with the file, line and fix,
or handled and counted. No Ray."""

from __future__ import annotations

import itertools
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rerank_ray.config import ConfigError, DataConfig, RunConfig, default_data_root
from rerank_ray.data.datasets import DataError, open_collection
from rerank_ray.data.groups import build_groups
from rerank_ray.data.shards import MissingTeacherScores, attach_teacher_scores
from rerank_ray.evaluation.evaluate import evaluate
from rerank_ray.evaluation.metrics import evaluate_run

TINY_DL19 = default_data_root() / "fixtures" / "tiny-dl19"
TINY_RUN = "bm25-top20.test.run"
# The tiny-dl19 first stage's nDCG@10 (BM25 top 20 of 4 DL19 queries).
TINY_DL19_NDCG = 0.7131653295484608
_NAMES = itertools.count()


def _copy_tiny(tmp_path: Path, monkeypatch, **replace: str) -> tuple[Path, str]:
    """A copy of tiny-dl19 under a fresh root, with some files replaced by `replace` texts
    (keys: file names with "/" as "__" and "." as "_", e.g. ``qrels__test_tsv``)."""
    monkeypatch.setenv("IR_DATASETS_HOME", str(tmp_path / "irds"))
    name = f"tiny-{tmp_path.name}-{next(_NAMES)}"  # ir_datasets ids are process-global
    folder = tmp_path / "root" / name
    shutil.copytree(TINY_DL19, folder)
    for key, text in replace.items():
        (folder / key.replace("__", "/").replace("_", ".")).write_text(text, encoding="utf-8")
    return tmp_path / "root", name


def _tiny_text(rel: str) -> str:
    return (TINY_DL19 / rel).read_text(encoding="utf-8")


def _open(root: Path, name: str, duplicates: str = "dedupe"):
    return open_collection(name, root=root, split="test", first_stage="bm25-top20", duplicates=duplicates)


def _run_file(folder: Path) -> Path:
    return (folder / TINY_RUN).resolve()


# ---------------------------------------------------------------------------------------------
# Duplicate run entries: deduplicated (the best-ranked kept, the rest counted) or refused.


def _doubled_run() -> tuple[str, int]:
    """The tiny-dl19 run with every entry listed twice (the copy 0.5 lower): 80 repeats."""
    lines = _tiny_text(TINY_RUN).splitlines()
    repeats = []
    for line in lines:
        cols = line.split()
        cols[4] = repr(float(cols[4]) - 0.5)
        repeats.append(" ".join(cols))
    return "\n".join(lines + repeats) + "\n", len(lines)


def test_duplicate_run_entries_are_dropped_and_counted(tmp_path, monkeypatch, caplog):
    text, repeats = _doubled_run()
    root, name = _copy_tiny(tmp_path, monkeypatch, **{"bm25-top20_test_run": text})
    clean = open_collection("fixtures/tiny-dl19", split="test", first_stage="bm25-top20")
    with caplog.at_level(logging.WARNING, logger="rerank_ray.data"):
        c = _open(root, name)
        assert c.run == clean.run  # each pair once, at its best-ranked (first) entry's score
    assert c.run_duplicates == repeats == 80
    assert "dropped 80 repeated (query_id, doc_id) run entries" in caplog.text


def test_duplicate_run_entries_do_not_change_the_metric(tmp_path, monkeypatch):
    # Before: a run listing documents twice evaluated differently from the clean run (the issue
    # measured 0.7521 against 0.7132 on this fixture); now it evaluates exactly as the clean one.
    text, _ = _doubled_run()
    root, name = _copy_tiny(tmp_path, monkeypatch, **{"bm25-top20_test_run": text})
    c = _open(root, name)
    aggregate, _ = evaluate_run(c.qrels, c.run, ["nDCG@10"])
    assert aggregate["nDCG@10"] == pytest.approx(TINY_DL19_NDCG, abs=1e-12)
    assert round(aggregate["nDCG@10"], 4) == 0.7132


def test_duplicate_run_entries_in_evaluation_are_reported(tmp_path, monkeypatch):
    text, _ = _doubled_run()
    root, name = _copy_tiny(tmp_path, monkeypatch, **{"bm25-top20_test_run": text})
    run_file = root / name / TINY_RUN
    result = evaluate(None, ["tiny-dl19"], out_dir=tmp_path / "eval", run_files={"tiny-dl19": run_file})
    assert result.suites["tiny-dl19"]["nDCG@10"] == pytest.approx(TINY_DL19_NDCG, abs=1e-12)
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())["suites"]["tiny-dl19"]
    assert report["run_duplicates_dropped"] == 80
    with pytest.raises(DataError, match="listed twice"):
        evaluate(
            None,
            ["tiny-dl19"],
            out_dir=tmp_path / "eval2",
            run_files={"tiny-dl19": run_file},
            data=DataConfig(duplicate_run_entries="error"),
        )


def test_duplicate_run_entries_refused_with_file_and_line(tmp_path, monkeypatch):
    text, _ = _doubled_run()
    root, name = _copy_tiny(tmp_path, monkeypatch, **{"bm25-top20_test_run": text})
    with pytest.raises(DataError) as err:
        _open(root, name, duplicates="error").run  # noqa: B018
    message = str(err.value)
    # The first repeat in rank order: the 0.5-lower copy of query 19335's first entry, line 81.
    assert f"{_run_file(root / name)}:81:" in message
    assert "listed twice" in message and "data.duplicate_run_entries=dedupe" in message


def test_duplicate_run_entries_never_repeat_a_negative_in_a_group(tmp_path, monkeypatch):
    text, _ = _doubled_run()
    root, name = _copy_tiny(tmp_path, monkeypatch, **{"bm25-top20_test_run": text})
    cfg = RunConfig.from_dict(
        {
            "data": {"root": str(root), "train": [name], "train_split": "test", "first_stage": "bm25-top20"},
            "groups": {"depth": 40, "group_size": 8},
        }
    )
    result = build_groups(cfg, tmp_path / "groups")
    groups = pd.read_parquet(result.path)
    assert all(len(set(ids)) == len(ids) for ids in groups["doc_ids"])
    assert result.stats.run_duplicates_dropped == 80
    assert "dropped 80 repeated first-stage run entries" in result.stats.summary()
    with pytest.raises(DataError, match="listed twice"):
        build_groups(
            RunConfig.from_dict(
                {**cfg.to_dict(), "data": {**cfg.to_dict()["data"], "duplicate_run_entries": "error"}}
            ),
            tmp_path / "groups2",
        )


def test_duplicate_run_entries_option_is_checked():
    assert RunConfig().data.duplicate_run_entries == "dedupe"
    assert (
        RunConfig.from_dict({"data": {"duplicate_run_entries": "error"}}).data.duplicate_run_entries
        == "error"
    )
    with pytest.raises(ConfigError, match="duplicate_run_entries"):
        RunConfig.from_dict({"data": {"duplicate_run_entries": "keep"}})


# ---------------------------------------------------------------------------------------------
# UTF-8 byte order marks: stripped and counted, never a phantom id.


def test_bom_in_run_qrels_and_jsonl_is_stripped(tmp_path, monkeypatch, caplog):
    bom = "\ufeff"
    run = _tiny_text(TINY_RUN).splitlines()
    run[40] = bom + run[40]  # a second file concatenated into this one
    root, name = _copy_tiny(
        tmp_path,
        monkeypatch,
        **{
            "bm25-top20_test_run": bom + "\n".join(run) + "\n",
            "qrels__test_tsv": bom + _tiny_text("qrels/test.tsv"),
            "queries_jsonl": bom + _tiny_text("queries.jsonl"),
            "corpus_jsonl": bom + _tiny_text("corpus.jsonl"),
        },
    )
    clean = open_collection("fixtures/tiny-dl19", split="test", first_stage="bm25-top20")
    with caplog.at_level(logging.WARNING, logger="rerank_ray.data"):
        c = _open(root, name)
        assert c.run == clean.run  # no phantom "\ufeff19335" query
        assert c.qrels == clean.qrels
        assert c.queries == clean.queries
        assert c.doc_texts(list(clean.qrels["19335"])) == clean.doc_texts(list(clean.qrels["19335"]))
    assert (
        f"{_run_file(root / name)}: stripped 2 UTF-8 byte order mark(s) at the start of line(s) [1, 41]"
        in (caplog.text)
    )


def test_bom_inside_an_id_is_refused(tmp_path, monkeypatch):
    root, name = _copy_tiny(
        tmp_path, monkeypatch, **{"bm25-top20_test_run": "19335 Q0 \ufeff8412684 1 10.6 bm25\n"}
    )
    with pytest.raises(DataError) as err:
        _open(root, name).run  # noqa: B018
    assert f"{_run_file(root / name)}:1:" in str(err.value) and "byte order mark" in str(err.value)


# ---------------------------------------------------------------------------------------------
# Empty runs, non-finite run scores.


@pytest.mark.parametrize("text", ["", "\n\n"])
def test_empty_run_is_an_error(tmp_path, monkeypatch, text):
    root, name = _copy_tiny(tmp_path, monkeypatch, **{"bm25-top20_test_run": text})
    with pytest.raises(DataError, match="the first-stage run has no entries"):
        _open(root, name).run  # noqa: B018


def test_empty_run_file_in_evaluation_is_an_error(tmp_path):
    # Before: nDCG 0.0 and exit code 0.
    (tmp_path / "empty.run").write_text("")
    with pytest.raises(DataError, match=f"{tmp_path / 'empty.run'}: the first-stage run has no entries"):
        evaluate(
            None, ["tiny-dl19"], out_dir=tmp_path / "eval", run_files={"tiny-dl19": tmp_path / "empty.run"}
        )


def test_run_of_other_queries_is_an_error():
    with pytest.raises(DataError, match="shares no query with the qrels"):
        evaluate_run({"q1": {"d1": 1}}, {"q9": [("d1", 1.0)]}, ["nDCG@10"])


@pytest.mark.parametrize("score", ["nan", "inf", "-inf"])
def test_non_finite_run_score_is_refused(tmp_path, monkeypatch, score):
    run = _tiny_text(TINY_RUN).splitlines()
    run[2] = run[2].rsplit(" ", 2)[0] + f" {score} bm25"
    root, name = _copy_tiny(tmp_path, monkeypatch, **{"bm25-top20_test_run": "\n".join(run) + "\n"})
    with pytest.raises(DataError) as err:
        _open(root, name).run  # noqa: B018
    assert f"{_run_file(root / name)}:3: the score must be a finite number" in str(err.value)


# ---------------------------------------------------------------------------------------------
# Queries without text; judged queries without candidates.


def test_queries_without_text_are_counted_not_blamed_on_negatives(tmp_path, monkeypatch, caplog):
    queries = [line for line in _tiny_text("queries.jsonl").splitlines() if '"19335"' not in line]
    root, name = _copy_tiny(tmp_path, monkeypatch, **{"queries_jsonl": "\n".join(queries) + "\n"})
    assert _open(root, name).queries_without_text == ["19335"]
    cfg = RunConfig.from_dict(
        {
            "data": {"root": str(root), "train": [name], "train_split": "test", "first_stage": "bm25-top20"},
            "groups": {"depth": 20, "group_size": 4},
        }
    )
    with caplog.at_level(logging.WARNING, logger="rerank_ray.data"):
        result = build_groups(cfg, tmp_path / "groups")
    assert result.stats.queries_without_text == 1
    assert result.stats.without_text_ids == {name: ["19335"]}
    assert "1 judged or retrieved queries have no text" in result.stats.summary()
    assert "have no text in the queries file" in caplog.text
    # With every query's text missing, the error says so (before: "too few negatives").
    root2, name2 = _copy_tiny(tmp_path, monkeypatch, **{"queries_jsonl": '{"_id": "other", "text": "x"}\n'})
    cfg2 = RunConfig.from_dict(
        {**cfg.to_dict(), "data": {**cfg.to_dict()["data"], "root": str(root2), "train": [name2]}}
    )
    with pytest.raises(DataError, match="4 judged or retrieved queries have no text"):
        build_groups(cfg2, tmp_path / "groups2")


def test_judged_queries_without_candidates_score_zero_and_are_reported(tmp_path, monkeypatch):
    run = [line for line in _tiny_text(TINY_RUN).splitlines() if not line.startswith("19335 ")]
    root, name = _copy_tiny(tmp_path, monkeypatch, **{"bm25-top20_test_run": "\n".join(run) + "\n"})
    c = _open(root, name)
    full = open_collection("fixtures/tiny-dl19", split="test", first_stage="bm25-top20")
    _, per_query_full = evaluate_run(full.qrels, full.run, ["nDCG@10"])
    aggregate, per_query = evaluate_run(c.qrels, c.run, ["nDCG@10"])
    # Scored 0 and kept in the mean over the 4 judged queries (trec_eval -c).
    assert per_query["19335"] == {"nDCG@10": 0.0}
    others = sum(v["nDCG@10"] for q, v in per_query_full.items() if q != "19335")
    assert aggregate["nDCG@10"] == pytest.approx(others / 4)
    result = evaluate(
        None, ["tiny-dl19"], out_dir=tmp_path / "eval", run_files={"tiny-dl19": root / name / TINY_RUN}
    )
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())["suites"]["tiny-dl19"]
    assert report["judged_queries_without_candidates"] == ["19335"]
    assert report["queries"] == 4
    assert result.suites["tiny-dl19"]["nDCG@10"] == pytest.approx(others / 4)


# ---------------------------------------------------------------------------------------------
# Teacher scores: non-finite values and id types.


def _groups() -> pd.DataFrame:
    return pd.DataFrame(
        {"query_id": ["19335", "47923"], "doc_ids": [["1", "2"], ["3", "4"]], "group_id": [0, 1]}
    )


def _scores(**columns) -> pd.DataFrame:
    base = {
        "query_id": ["19335", "19335", "47923", "47923"],
        "doc_id": ["1", "2", "3", "4"],
        "score": [1.0, 2.0, 3.0, 4.0],
    }
    return pd.DataFrame({**base, **columns})


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_teacher_scores_are_refused(tmp_path, bad):
    path = tmp_path / "scores.parquet"
    _scores(score=[1.0, bad, 3.0, bad]).to_parquet(path)
    with pytest.raises(DataError) as err:
        attach_teacher_scores(_groups(), path)
    message = str(err.value)
    assert f"teacher scores {path} hold 2 non-finite (NaN or inf) scores of 4" in message
    assert f"row 1: (19335, 2) {bad}" in message and "row 3: (47923, 4)" in message


@pytest.mark.parametrize(
    "column, values, dtype",
    [
        ("query_id", [19335.0, 19335.0, 47923.0, 47923.0], "float64"),
        ("query_id", [19335, 19335, 47923, 47923], "int64"),
        ("doc_id", [1, 2, 3, 4], "int64"),
    ],
)
def test_numeric_id_columns_are_named_as_such(tmp_path, column, values, dtype):
    path = tmp_path / "scores.parquet"
    _scores(**{column: values}).to_parquet(path)
    with pytest.raises(DataError) as err:
        attach_teacher_scores(_groups(), path)
    message = str(err.value)
    assert f"column {column} has type {dtype}" in message and "ids must be strings" in message
    assert "have no teacher score" not in message


def test_float_formatted_string_ids_are_named_as_such(tmp_path):
    # Ids that went through a float ("19335.0"): before, only "4 of 4 pairs have no teacher score".
    path = tmp_path / "scores.parquet"
    _scores(query_id=["19335.0", "19335.0", "47923.0", "47923.0"]).to_parquet(path)
    with pytest.raises(MissingTeacherScores) as err:
        attach_teacher_scores(_groups(), path)
    message = str(err.value)
    assert "4 of 4 (query_id, doc_id) pairs" in message
    assert "float-formatted ids (('19335.0', '1') for the groups' ('19335', '1'))" in message
    assert "ids must be strings" in message


def test_scoring_job_gaps_are_missing_teacher_scores_with_a_hint(tmp_path):
    # One error class for "pairs without a (finite) teacher score", with one console hint, whether
    # found when attaching scores to groups or at the end of a scoring job (was CoverageError).
    from rerank_ray.console import explain
    from rerank_ray.teacher.config import ScoringConfig, TeacherModel
    from rerank_ray.teacher.score import SCORES_DIR, score_pairs, shard_path

    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "rerank_ray.json").write_text(json.dumps({"model": {"max_length": 64}}))
    pairs = pd.DataFrame(
        {"query_id": ["q1", "q1"], "doc_id": ["d1", "d2"], "query": ["a", "a"], "doc": ["x", "y"]}
    )
    out = tmp_path / "scores"
    (out / SCORES_DIR).mkdir(parents=True)
    # A shard already on disk (so no Ray job runs) that lacks one pair.
    pd.DataFrame({"query_id": ["q1"], "doc_id": ["d1"], "score": [1.0]}).to_parquet(shard_path(out, 0))
    with pytest.raises(MissingTeacherScores) as err:
        score_pairs(
            pairs, TeacherModel(kind="cross_encoder", path=str(teacher)), out, scoring=ScoringConfig()
        )
    assert "1 of 2 pairs have no teacher score, e.g. [('q1', 'd2')]" in str(err.value)
    explained = explain(err.value)
    assert explained.known and "rerun it" in explained.fix and "rerank-ray score" in explained.fix
    # A shard holding a NaN score (a teacher that overflowed) is named as such, not as a gap.
    pd.DataFrame({"query_id": ["q1", "q1"], "doc_id": ["d1", "d2"], "score": [1.0, float("nan")]}).to_parquet(
        shard_path(out, 0)
    )
    with pytest.raises(MissingTeacherScores) as err:
        score_pairs(
            pairs, TeacherModel(kind="cross_encoder", path=str(teacher)), out, scoring=ScoringConfig()
        )
    assert "1 of 2 pairs have non-finite teacher scores (NaN/inf), e.g. [('q1', 'd2')]" in str(err.value)
    assert "no teacher score" not in str(err.value)


def test_run_queries_without_text_stop_reranking_with_the_fix(tmp_path, monkeypatch):
    from rerank_ray.evaluation.rerank import rerank

    queries = [line for line in _tiny_text("queries.jsonl").splitlines() if '"19335"' not in line]
    root, name = _copy_tiny(tmp_path, monkeypatch, **{"queries_jsonl": "\n".join(queries) + "\n"})
    with pytest.raises(DataError, match=r"1 queries without text, e.g. \['19335'\]; add their texts"):
        rerank(lambda q, d: [0.0] * len(d), _open(root, name), depth=20, batch_size=8)


# ---------------------------------------------------------------------------------------------
# Data that contradicts itself: refused with the file and both lines; exact repeats counted.


def test_a_pair_judged_twice_with_different_labels_is_refused_with_both_lines(tmp_path, monkeypatch):
    qrels = _tiny_text("qrels/test.tsv")
    root, name = _copy_tiny(tmp_path, monkeypatch, qrels__test_tsv=qrels + "19335\t1729\t0\n")
    last = len(qrels.splitlines()) + 1
    with pytest.raises(DataError) as e:
        _ = _open(root, name).qrels  # what training groups and every evaluation read
    message = str(e.value)
    assert f"qrels/test.tsv:{last}: query '19335' document '1729' is judged 0 here and 2 at line 3" in message
    assert "keep one judgment per (query, document) pair" in message


def test_a_pair_judged_twice_with_the_same_label_is_counted_and_changes_nothing(
    tmp_path, monkeypatch, caplog
):
    qrels = _tiny_text("qrels/test.tsv")
    root, name = _copy_tiny(tmp_path, monkeypatch, qrels__test_tsv=qrels + "19335\t1729\t2\n19335\t1726\t0\n")
    with caplog.at_level(logging.WARNING, logger="rerank_ray.data"):
        doubled = _open(root, name).qrels
    assert "dropped 2 judgment(s) repeated with the same label" in caplog.text
    clean_root, clean = _copy_tiny(tmp_path, monkeypatch)
    assert doubled == _open(clean_root, clean).qrels


def test_a_document_id_repeated_with_another_text_is_refused_and_an_exact_repeat_is_counted(
    tmp_path, monkeypatch, caplog
):
    corpus = _tiny_text("corpus.jsonl")
    first = corpus.splitlines()[0]
    other = json.dumps({**json.loads(first), "text": "another text"})
    root, name = _copy_tiny(tmp_path, monkeypatch, corpus_jsonl=corpus + other + "\n")
    with pytest.raises(DataError) as e:
        _open(root, name).doc_text("1726")
    last = len(corpus.splitlines()) + 1
    assert (
        f"corpus.jsonl:{last}: document '1726' is repeated with another title or text than at line 1"
        in str(e.value)
    )

    root, name = _copy_tiny(tmp_path, monkeypatch, corpus_jsonl=corpus + first + "\n")
    with caplog.at_level(logging.WARNING, logger="rerank_ray.data"):
        assert _open(root, name).doc_text("1726") == json.loads(first)["text"]
    assert "dropped 1 document(s) repeated with the same title and text" in caplog.text


def test_an_ir_datasets_id_with_contradicting_judgments_is_refused(caplog):
    from ir_datasets.formats import TrecQrel

    from rerank_ray.data.datasets import Collection

    class Dataset:
        def __init__(self, rows):
            self.rows = rows

        def qrels_iter(self):
            return iter(TrecQrel(q, d, r, "0") for q, d, r in self.rows)

    collection = Collection("msmarco", "msmarco-passage/trec-dl-2019/judged")
    collection.__dict__["dataset"] = Dataset([("1", "a", 1), ("1", "a", 1), ("1", "b", 0)])
    with caplog.at_level(logging.WARNING, logger="rerank_ray.data"):
        assert collection.qrels == {"1": {"a": 1, "b": 0}}
    assert "dropped 1 judgment(s) repeated with the same label" in caplog.text
    contradicting = Collection("msmarco", "msmarco-passage/trec-dl-2019/judged")
    contradicting.__dict__["dataset"] = Dataset([("1", "a", 1), ("1", "a", 3)])
    with pytest.raises(
        DataError, match="msmarco-passage/trec-dl-2019/judged: query '1' document 'a' is judged 3 and 1"
    ):
        _ = contradicting.qrels
