"""What a teacher-scoring job needs: which model scores, and how the Ray Data job is laid out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

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
    """A ready-to-score teacher: a model family (``kind``) and where its weights are (``path``).

    - ``cross_encoder``: ``path`` is a saved reranker folder (``rerank_ray.json`` inside, as
      written by ``Reranker.save``); its own max_length, template and autocast are used.
    - ``bi_encoder``: ``path`` is a model source (local folder, weights package, hub id) of a
      sentence embedding model (``rerank_ray/models/bi_encoder.py``); the settings below apply.

    Everything that differs by kind is in this file, in :data:`KINDS` (how to load the model,
    which folder its fingerprint hashes, which settings its scores depend on); the scoring job,
    provenance and evaluation call :meth:`load`, :meth:`folder` and :meth:`settings` and never
    branch on the kind. Adding a kind whose model class exists touches two files: this one (the
    name in ``kind``, any field it needs, its entry in :data:`KINDS`) and
    ``rerank_ray/teacher/specs.py`` (its study spec: a class with ``kind`` and a ``scorer()``
    that returns this model; ``teacher/stage.py`` evaluates and scores any such spec).
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

    def load(self, device: Any, dtype: Any) -> Any:
        """The model, on `device` in `dtype`, with ``score(queries, docs, batch_size)``."""
        return KINDS[self.kind].load(self, device, dtype)

    def folder(self) -> Path:
        """The folder whose files are the teacher's content (its fingerprint)."""
        return KINDS[self.kind].folder(self)

    def settings(self) -> dict[str, Any]:
        """What the scores depend on besides the folder's files (part of their provenance)."""
        return KINDS[self.kind].settings(self)

    def saved_reranker(self) -> str | None:
        """The folder when the teacher is a reranker saved by this project (evaluation then
        treats it as any saved reranker: on the scoring pool for large suites), else None."""
        return KINDS[self.kind].saved_reranker(self)


class _CrossEncoderKind:
    @staticmethod
    def load(teacher: TeacherModel, device: Any, dtype: Any) -> Any:
        from rerank_ray.models import load_reranker

        return load_reranker(teacher.path).to(device, dtype).eval()

    @staticmethod
    def folder(teacher: TeacherModel) -> Path:
        return Path(teacher.path)

    @staticmethod
    def settings(teacher: TeacherModel) -> dict[str, Any]:
        # Its autocast and template are in its fingerprinted folder.
        meta = json.loads((Path(teacher.path) / "rerank_ray.json").read_text())
        return {"max_length": meta["model"]["max_length"]}

    @staticmethod
    def saved_reranker(teacher: TeacherModel) -> str | None:
        return teacher.path


class _BiEncoderKind:
    @staticmethod
    def load(teacher: TeacherModel, device: Any, dtype: Any) -> Any:
        from rerank_ray.models.bi_encoder import BiEncoder

        return BiEncoder(
            teacher.path,
            max_length=teacher.max_length,
            query_max_length=teacher.query_max_length,
            scale=teacher.scale,
            autocast=teacher.autocast,
            device=device,
            dtype=dtype,
        )

    @staticmethod
    def folder(teacher: TeacherModel) -> Path:
        from rerank_ray.models.sources import resolve_source

        return Path(resolve_source(teacher.path))

    @staticmethod
    def settings(teacher: TeacherModel) -> dict[str, Any]:
        return {
            "max_length": teacher.max_length,
            "query_max_length": teacher.query_max_length,
            "scale": teacher.scale,
            "autocast": teacher.autocast,
        }

    @staticmethod
    def saved_reranker(teacher: TeacherModel) -> str | None:
        return None


# kind -> how that family loads, what its fingerprint hashes, what its scores depend on.
KINDS: dict[str, Any] = {"cross_encoder": _CrossEncoderKind, "bi_encoder": _BiEncoderKind}
