"""The teacher-scoring job on local Ray: coverage, resumption after a partial output, reuse."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from rerank_ray.config import ModelConfig
from rerank_ray.models import build_model
from rerank_ray.teacher.config import ScoringConfig, TeacherModel
from rerank_ray.teacher.provenance import pairs_from_groups
from rerank_ray.teacher.score import score_groups, shard_path
from tests.conftest import TINY_BERT

pytestmark = pytest.mark.slow


@pytest.fixture
def tiny_teacher(tmp_path):
    """A tiny random cross-encoder saved as a study would save a trained teacher."""
    import torch

    torch.manual_seed(0)
    return str(build_model(ModelConfig.model_validate(TINY_BERT)).save(tmp_path / "teacher"))


@pytest.fixture
def groups_path(tmp_path):
    rows = []
    for q in range(5):
        doc_ids = [f"d{q}-{i}" for i in range(4)]
        rows.append(
            {
                "query_id": f"q{q}",
                "query": f"query number {q}",
                "doc_ids": doc_ids,
                "docs": [f"document {d} about topic {q}" for d in doc_ids],
                "group_id": q,
                "dataset": "toy",
            }
        )
    path = tmp_path / "groups.parquet"
    pd.DataFrame(rows).to_parquet(path)
    return path


def test_interrupted_scoring_resumes_only_missing_shards(ray_local, tmp_path, tiny_teacher, groups_path):
    teacher = TeacherModel(kind="cross_encoder", path=tiny_teacher)
    # pool_min_pairs 0: on the actor pool however small the job.
    scoring = ScoringConfig(actors=2, cpus_per_actor=0.5, batch_size=3, shard_size=6, pool_min_pairs=0)
    out = tmp_path / "scores"

    first = score_groups(groups_path, teacher, out, scoring=scoring)
    assert first.shards_scored == 4 and not first.reused  # 20 pairs / 6 per shard
    scores = pd.read_parquet(first.path).sort_values(["query_id", "doc_id"], ignore_index=True)
    pairs = pairs_from_groups(pd.read_parquet(groups_path))
    assert list(zip(scores.query_id, scores.doc_id, strict=True)) == list(
        zip(pairs.query_id, pairs.doc_id, strict=True)
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["count"] == 20 and manifest["coverage"]["pairs_scored"] == 20
    assert manifest["cost"]["where"] == "pool"
    assert len(manifest["teacher"]["fingerprint"]) == 64 and manifest["dtype"] == "float32"
    assert manifest["max_length"] == TINY_BERT["max_length"]

    # Simulate an interruption: two shards and the manifest never got written.
    kept = {i: shard_path(out, i).stat().st_mtime_ns for i in (0, 3)}
    for i in (1, 2):
        shard_path(out, i).unlink()
    (out / "manifest.json").unlink()

    resumed = score_groups(groups_path, teacher, out, scoring=scoring)
    assert resumed.shards_scored == 2 and not resumed.reused
    assert {i: shard_path(out, i).stat().st_mtime_ns for i in kept} == kept
    again = pd.read_parquet(resumed.path).sort_values(["query_id", "doc_id"], ignore_index=True)
    pd.testing.assert_frame_equal(again, scores, atol=1e-5)

    # A finished job with the same provenance is reused as it is.
    reused = score_groups(groups_path, teacher, out, scoring=scoring)
    assert reused.reused and reused.shards_scored == 0

    # Another shard size is another provenance: old shards are replaced, never mixed.
    other = score_groups(groups_path, teacher, out, scoring=scoring.model_copy(update={"shard_size": 10}))
    assert other.shards_scored == 2
    assert sorted(p.name for p in other.path.glob("part-*.parquet")) == [
        "part-00000.parquet",
        "part-00001.parquet",
    ]


def test_a_job_below_pool_min_pairs_scores_in_process_with_the_pools_scores_and_resumes(
    ray_local, tmp_path, tiny_teacher, groups_path
):
    teacher = TeacherModel(kind="cross_encoder", path=tiny_teacher)
    # One thread per actor and one in process (1 actor x 1 CPU): the same blocks, the same
    # forward passes, the same arithmetic.
    pool = ScoringConfig(actors=1, cpus_per_actor=1, batch_size=3, shard_size=6, pool_min_pairs=0)
    local = pool.model_copy(update={"pool_min_pairs": 21})  # the job has 20 pairs
    pooled = score_groups(groups_path, teacher, tmp_path / "pool", scoring=pool)
    here = score_groups(groups_path, teacher, tmp_path / "local", scoring=local)
    assert (pooled.manifest["cost"]["where"], here.manifest["cost"]["where"]) == ("pool", "in_process")
    assert here.manifest["fingerprint"] == pooled.manifest["fingerprint"] and here.shards_scored == 4

    def read(path):
        # Ray Data writes its batches' strings Arrow-backed: compare values, not dtypes.
        frame = pd.read_parquet(path).sort_values(["query_id", "doc_id"], ignore_index=True)
        return list(zip(frame.query_id.astype(str), frame.doc_id.astype(str), frame.score, strict=True))

    assert read(here.path) == read(pooled.path)

    # In process resumes as the pool does: only the missing shard is scored again.
    kept = {i: shard_path(tmp_path / "local", i).stat().st_mtime_ns for i in (0, 1, 3)}
    shard_path(tmp_path / "local", 2).unlink()
    (tmp_path / "local" / "manifest.json").unlink()
    resumed = score_groups(groups_path, teacher, tmp_path / "local", scoring=local)
    assert resumed.shards_scored == 1 and resumed.manifest["cost"]["where"] == "in_process"
    assert {i: shard_path(tmp_path / "local", i).stat().st_mtime_ns for i in kept} == kept
    assert read(resumed.path) == read(pooled.path)


def test_evaluation_on_the_actor_pool_gives_the_in_process_run(ray_local, tmp_path, tiny_teacher):
    from rerank_ray.evaluation.evaluate import evaluate

    local = evaluate(tiny_teacher, ["tiny-dl19"], out_dir=tmp_path / "local", batch_size=8)
    # Both sides cut forward passes by token count, each within the pairs it is handed (in
    # process: chunks of the suite; on the pool: blocks of a shard), so a pair can sit in a batch
    # of another padded width: its score then differs by float rounding only, and the run's
    # order is the same.
    pool = ScoringConfig(actors=2, cpus_per_actor=2, batch_size=8, shard_size=32)
    pooled = evaluate(
        tiny_teacher, ["tiny-dl19"], out_dir=tmp_path / "pool", batch_size=8, pool=pool, pool_min_pairs=1
    )
    assert len(list((tmp_path / "pool" / "scores" / "tiny-dl19" / "scores").glob("part-*.parquet"))) == 3

    def read(path):
        rows = [line.split() for line in path.read_text().splitlines()]
        return [(q, d, int(rank)) for q, _, d, rank, _, _ in rows], [float(r[4]) for r in rows]

    local_run, local_scores = read(tmp_path / "local" / "tiny-dl19.run")
    pool_run, pool_scores = read(tmp_path / "pool" / "tiny-dl19.run")
    assert pool_run == local_run and len(local_run) == 80
    assert pool_scores == pytest.approx(local_scores, rel=1e-5, abs=1e-6)
    assert pooled.metrics == pytest.approx(local.metrics)
    # A second evaluation reuses the finished scores instead of starting actors.
    again = evaluate(
        tiny_teacher, ["tiny-dl19"], out_dir=tmp_path / "pool", batch_size=8, pool=pool, pool_min_pairs=1
    )
    assert again.metrics == pooled.metrics
