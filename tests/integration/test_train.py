"""Ray Train + DeepSpeed on CPU, end to end, on a tiny encoder and the tiny-scifact fixture."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from rerank_ray.config import load_config
from rerank_ray.data.groups import build_groups
from rerank_ray.models import build_model, load_reranker
from rerank_ray.train.driver import train, training_inputs
from rerank_ray.train.loop import FAIL_AT_STEP_ENV, _seed_everything
from tests.conftest import shift_invariant

pytestmark = pytest.mark.slow


def initial_state(cfg):
    """The weights a worker starts from: same seed, same construction as the loop."""
    _seed_everything(cfg.train.seed)
    return {k: v.detach().clone() for k, v in build_model(cfg.model).state_dict().items()}


def assert_loss_fell(history):
    losses = [h["loss"] for h in history]
    assert len(losses) >= 6, losses
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses


def assert_every_parameter_changed(before, model):
    after = model.state_dict()
    trainable = {
        name for name, p in model.named_parameters() if p.requires_grad and not shift_invariant(name)
    }
    assert trainable
    unchanged = [n for n in trainable if torch.equal(before[n], after[n])]
    assert not unchanged, f"parameters that did not change: {unchanged}"


def test_two_worker_zero2_loss_falls_and_every_parameter_changes(ray_local, tiny_run_overrides):
    cfg = load_config(
        overrides=[
            *tiny_run_overrides,
            "name=zero2",
            "train.epochs=6",
            "scaling.num_workers=2",
            "scaling.cpus_per_worker=1",
            "deepspeed.zero_stage=2",
        ]
    )
    before = initial_state(cfg)
    result = train(cfg)
    assert_loss_fell(result.history)
    for key in ("loss", "lr", "pairs_per_s", "tokens_per_s"):
        assert result.metrics[key] >= 0, key
    model = load_reranker(result.model_dir)
    assert_every_parameter_changed(before, model)
    saved = json.loads((result.model_dir / "rerank_ray.json").read_text())
    assert saved["family"] == "encoder"


def test_zero3_trains_and_exports_consolidated_weights(ray_local, tiny_run_overrides):
    cfg = load_config(
        overrides=[
            *tiny_run_overrides,
            "name=zero3",
            "train.epochs=1",
            "scaling.num_workers=2",
            "scaling.cpus_per_worker=1",
            "deepspeed.zero_stage=3",
        ]
    )
    before = initial_state(cfg)
    result = train(cfg)
    assert result.metrics["step"] == 4  # 16 groups (4 queries x 4) -> 8 per worker -> 4 steps of 2
    model = load_reranker(result.model_dir)
    # Consolidated, not partitioned: every tensor has its full shape.
    for name, tensor in model.state_dict().items():
        assert tensor.shape == before[name].shape, name
    assert_every_parameter_changed(before, model)


def test_distillation_needs_aligned_teacher_scores(ray_local, tiny_run_overrides, tmp_path):
    from rerank_ray.data.shards import MissingTeacherScores

    cfg = load_config(overrides=[*tiny_run_overrides, "name=kd", "loss.name=distillation"])
    groups = build_groups(cfg, tmp_path / "groups")
    frame = pd.read_parquet(groups.path)
    pairs = frame[["query_id", "doc_ids"]].explode("doc_ids").drop_duplicates()
    pairs = pairs.rename(columns={"doc_ids": "doc_id"})
    # A teacher that prefers the first-listed (positive) document.
    pairs["score"] = [3.0 if i == 0 else 0.0 for i in pairs.groupby("query_id").cumcount()]
    full = tmp_path / "teacher.parquet"
    pairs.to_parquet(full)
    partial = tmp_path / "partial.parquet"
    pairs.iloc[3:].to_parquet(partial)

    bad = load_config(
        overrides=[
            *tiny_run_overrides,
            "name=kd",
            "loss.name=distillation",
            f"train.teacher_scores={partial}",
        ]
    )
    with pytest.raises(MissingTeacherScores, match="3"):
        train(bad, groups_path=groups.path)

    # The full file is what the workers get: each group's scores in its doc_ids' order. (Training
    # on such scores is what every study distillation trial does: test_byo.py's
    # test_custom_suite_study_end_to_end and test_study.py's 2x2 study, whose trials must be ok.)
    good = load_config(
        overrides=[*tiny_run_overrides, "name=kd", "loss.name=distillation", f"train.teacher_scores={full}"]
    )
    shuffled = training_inputs(good, groups.path).to_pandas()
    # Read by Ray Data in the seeded order the driver's pandas shuffle gave before (so a run
    # trains on the same sequence of groups as it did).
    expected = frame.sample(frac=1.0, random_state=good.train.seed).reset_index(drop=True)
    assert shuffled["group_id"].tolist() == expected["group_id"].tolist() != sorted(expected["group_id"])
    pd.testing.assert_frame_equal(shuffled.drop(columns=["teacher_scores"]), expected)
    score = {(q, d): x for q, d, x in zip(pairs["query_id"], pairs["doc_id"], pairs["score"], strict=True)}
    rows = zip(shuffled["query_id"], shuffled["doc_ids"], shuffled["teacher_scores"], strict=True)
    for query_id, doc_ids, scores in rows:
        assert list(scores) == [score[query_id, d] for d in doc_ids]
    assert 3.0 in score.values() and 0.0 in score.values()


def test_resume_after_worker_failure_and_checkpoint_round_trip(
    ray_local, tiny_run_overrides, tmp_path, monkeypatch
):
    monkeypatch.setenv(FAIL_AT_STEP_ENV, "3")  # the test-only fault hook, forwarded to the workers
    # 4 of the epoch's 8 steps: the failure at step 3 and the resume from the step-2 checkpoint
    # both fall mid-epoch, so the restarted attempt must skip the batches already consumed.
    cfg_overrides = [
        *tiny_run_overrides,
        "name=resume",
        "train.max_steps=4",
        "deepspeed.zero_stage=2",
        "train.checkpoint_every_steps=2",
        "train.max_failures=1",
    ]
    cfg = load_config(overrides=cfg_overrides)
    result = train(cfg)
    steps = [h["step"] for h in result.history]
    # The restarted attempt resumed from the step-2 checkpoint: the history holds each step once.
    assert steps == [1, 2, 3, 4], steps
    assert steps[-1] == result.metrics["step"]

    # The identical run again is reused, not retrained (nor restored from its final export) ...
    again = train(cfg)
    assert again.model_dir == result.model_dir and again.history == result.history
    # ... while a changed config trains from scratch instead of resuming the other run.
    monkeypatch.delenv(FAIL_AT_STEP_ENV)
    changed = train(load_config(overrides=[*cfg_overrides, "train.max_steps=2"]))
    assert [h["step"] for h in changed.history][0] == 1
    assert changed.metrics["step"] < result.metrics["step"]

    # Save -> load gives identical scores.
    model = load_reranker(result.model_dir)
    queries = ["what is a cell", "protein folding", "vaccines"]
    docs = ["cells are units of life", "alpha helix and beta sheets", "immune response to antigens"]
    scores = model.score(queries, docs, batch_size=2)
    again = load_reranker(model.save(tmp_path / "copy"))
    assert again.score(queries, docs, batch_size=3) == scores
