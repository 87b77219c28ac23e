"""What a teacher-scoring job needs: which model scores, and how the Ray Data job is laid out."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rerank_ray.config import Autocast, Section


class ScoringConfig(Section):
    """The Ray Data batch job that scores (query, document) pairs with a teacher."""

    # Size of the fixed actor pool; each actor holds one copy of the teacher and runs torch on
    # cpus_per_actor threads (rounded) when on CPU.
    actors: int = Field(1, ge=1)
    cpus_per_actor: float = Field(1.0, gt=0)
    gpus_per_actor: float = Field(0.0, ge=0)
    # Pairs per forward pass inside an actor (an actor sorts each block it gets by length first).
    batch_size: int = Field(64, ge=1)
    # Pairs per output Parquet shard: the unit of resumption after an interruption.
    shard_size: int = Field(2048, ge=1)
    # float32 on CPU; bfloat16 halves memory on a GPU. Scores are stored as float64 either way.
    dtype: Literal["float32", "bfloat16"] = "float32"
    # A CPU job with fewer pairs to score than this runs in the calling process instead of on an
    # actor pool: the same scorer on the same blocks and shards, torch on actors x cpus_per_actor
    # threads (at most this process's cores). A pool's start-up (planning, worker start, loading
    # the teacher in each actor) buys no speed on one machine, so below this it only adds
    # start-up; the measurements behind the default are in docs/BENCHMARKS.md ("Measurements
    # behind code constants"). 0: always the pool. A job with gpus_per_actor > 0 always uses the pool.
    pool_min_pairs: int = Field(20_000, ge=0)


class TeacherModel(Section):
    """A ready-to-score teacher.

    - ``cross_encoder``: ``path`` is a saved reranker folder (``rerank_ray.json`` inside, as
      written by ``Reranker.save``); its own max_length and template are used.
    - ``bi_encoder``: ``path`` is a model source (local folder, weights package, hub id) of a
      sentence embedding model; the score is ``scale * cos(mean_pool(q), mean_pool(d))``.

    ``kind`` is the registry of teacher kinds (tests/unit/test_registries.py checks that the
    study's teacher specs cover exactly these). Adding a kind touches:

    - this class: the name in ``kind`` and any field the kind needs;
    - ``rerank_ray/teacher/score.py``: loading and scoring in ``TeacherScorer``;
    - ``rerank_ray/teacher/provenance.py``: what ``teacher_fingerprint`` hashes, and what
      ``provenance`` records (the reuse key);
    - ``rerank_ray/study/config.py``: a spec class with ``kind: Literal[...]`` in ``TeacherSpec``
      (and its ``scorer()``), plus the module docstring's YAML example;
    - ``rerank_ray/teacher/stage.py``: one function per kind that turns the spec into a ready
      scorer and its evaluation (``teacher`` picks it), and its line in ``teacher_info``;
    - ``rerank_ray/evaluation/evaluate.py``: how ``evaluate`` reranks with a teacher of the
      kind (a bi-encoder: ``_bi_encoder_reranker``);
    - ``tests/unit/test_teacher.py``: scoring one batch without Ray.
    """

    kind: Literal["cross_encoder", "bi_encoder"]
    path: str
    # Bi-encoder only: truncation of documents and queries (tokens).
    max_length: int = Field(256, ge=8)
    query_max_length: int = Field(64, ge=8)
    # Bi-encoder only: cosine is in [-1, 1]; all-MiniLM-L6-v2 was trained with in-batch softmax
    # over 20 * cosine (sentence-transformers MultipleNegativesRankingLoss, scale=20), so this
    # turns cosines back into the logits the model was trained to produce.
    scale: float = Field(20.0, gt=0)
    # Bi-encoder only: bf16 matmuls under autocast (as ModelConfig.autocast; a cross-encoder
    # teacher follows the autocast saved with it).
    autocast: Autocast = "auto"
