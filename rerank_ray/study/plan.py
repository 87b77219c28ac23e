"""From a StudyConfig to the list of trials: what ``rerank-ray study --dry-run`` prints.

Each :class:`TrialPlan` carries the full, validated RunConfig of its trial, so the Tune
``param_space`` is just ``grid_search`` over the plans' plain dicts: the trial function rebuilds
everything from that dict (nothing else crosses into the trial).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rerank_ray.config import NAME_JOIN, ConfigError, RunConfig
from rerank_ray.config_loading import deep_merge, validate
from rerank_ray.study.config import StudyConfig
from rerank_ray.teacher.score import SCORES_DIR

NO_TEACHER = "none"

# Adding a study axis (today: strategy, student, teacher, seed) touches these places; the
# words are the same in the YAML, the trial name, the MLflow tags and the report:
#  1. study/config.py: the StudyConfig field (name -> spec), the GridBlock field, the unknown-name
#     check in StudyConfig._check, and the module docstring's YAML example (plus
#     study/study_yaml.merge_base when the axis's entries merge over `base`);
#  2. this file: a TrialPlan field, TrialPlan.tags / to_dict / describe, the loop and the
#     de-duplication key in plan_study, trial_name, and what the axis changes in trial_run;
#  3. study/trial.py: the MLflow tags run_trial sets on the trial's run;
#  4. study/records.py: the TrialRecord field, and study/run.py: the record built from the
#     plan (_record);
#  5. study/report.py: how the axis groups cells (_variants, _cells), the table columns and the
#     plot;
#  6. study/tracking.py: the list of child tags in the module docstring;
#  7. plan.py: the columns of the --dry-run plan table (format_plan);
#  8. tests/unit/test_study_config.py (grid, names, plan) and tests/unit/test_report.py.


@dataclass(frozen=True)
class TrialPlan:
    name: str
    strategy: str
    student: str
    teacher: str | None
    seed: int
    # Reserved by the Tune trial process itself (it evaluates the student).
    resources: dict[str, float]
    # Reserved by the trial's Ray Train workers, in addition.
    train_resources: dict[str, float]
    run: RunConfig = field(repr=False)

    def tags(self) -> dict[str, str]:
        """The MLflow tags (and report keys) of this trial."""
        return {
            "strategy": self.strategy,
            "student": self.student,
            "teacher": self.teacher or NO_TEACHER,
            "seed": str(self.seed),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "strategy": self.strategy,
            "student": self.student,
            "teacher": self.teacher,
            "seed": self.seed,
            "resources": self.resources,
            "train_resources": self.train_resources,
            "run": self.run.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialPlan:
        """The plan :meth:`to_dict` wrote (what a Tune trial is given)."""
        return cls(**{**data, "run": RunConfig.from_dict(data["run"])})

    def describe(self) -> str:
        """One line: Ray resources, then the per-student settings that decide memory."""
        res = ", ".join(f"{k} {v:g}" for k, v in self.resources.items())
        workers = ", ".join(f"{k} {v:g}" for k, v in self.train_resources.items())
        run = self.run
        memory = (
            f"{run.scaling.num_workers} worker(s), ZeRO-{run.deepspeed.zero_stage}, "
            f"micro {run.train.micro_batch_groups} x accum {run.train.grad_accum} groups, "
            f"lr {run.train.learning_rate:g}" + (f", LoRA r={run.model.lora.r}" if run.model.lora else "")
        )
        return f"{self.name}: trial {res}; train workers {workers}; {memory}"


def teacher_scores_dir(cfg: StudyConfig, teacher: str) -> Path:
    """Where teacher `teacher`'s scoring job writes (``score_groups`` out_dir)."""
    return cfg.study_dir / "teachers" / teacher / "scores"


def trial_name(strategy: str, student: str, teacher: str | None, seed: int) -> str:
    """``strategy+student[+teacher]+s<seed>``: names never contain ``+`` (config.NAME_JOIN), so
    different trials never share a name (``x`` + ``x-t`` against ``t-y`` + ``y`` would with ``-``)."""
    parts = [strategy, student] + ([teacher] if teacher else []) + [f"s{seed}"]
    return NAME_JOIN.join(parts)


def plan_study(cfg: StudyConfig) -> list[TrialPlan]:
    """Every trial of the study's grid, in a stable order, without running anything.

    Grid blocks are a union: a trial two blocks both name is planned once. Two different
    trials with one name (they would share a folder) are a ConfigError."""
    seen: dict[str, tuple[str, str, str | None, int]] = {}
    plans: list[TrialPlan] = []
    resources = {"CPU": cfg.tune.cpus_per_trial}
    if cfg.tune.gpus_per_trial:
        resources["GPU"] = cfg.tune.gpus_per_trial
    for block in cfg.blocks():
        for strategy in block.strategies or tuple(cfg.strategies):
            loss = cfg.strategies[strategy]
            teachers: tuple[str | None, ...] = (
                (block.teachers if block.teachers is not None else tuple(cfg.teachers))
                if loss.needs_teacher
                else (None,)
            )
            for student in block.students or tuple(cfg.students):
                for teacher in teachers:
                    for seed in block.seeds or cfg.seeds:
                        key = (strategy, student, teacher, seed)
                        name = trial_name(strategy, student, teacher, seed)
                        if seen.get(name) == key:
                            continue
                        if name in seen:
                            raise ConfigError(
                                f"trials {seen[name]} and {key} would both be named {name!r} and "
                                "share one folder; rename a student or teacher"
                            )
                        seen[name] = key
                        run = trial_run(cfg, name, strategy, student, teacher, seed)
                        plans.append(
                            TrialPlan(
                                name=name,
                                strategy=strategy,
                                student=student,
                                teacher=teacher,
                                seed=seed,
                                resources=dict(resources),
                                train_resources=train_resources(run),
                                run=run,
                            )
                        )
    return plans


def longest_first(plans: list[TrialPlan], walls: dict[str, float]) -> list[TrialPlan]:
    """The order to hand Tune the trials in: longest forecast wall time first, ties (and trials
    without a forecast, taken as 0) in plan order.

    Tune starts trials in the order given as slots free up. With fewer slots than trials, the
    longest-first order (LPT scheduling) leaves the short trials to fill the last slots, instead
    of a long trial starting last and running alone while the other slots idle (on a CPU
    machine a trial's worker uses only its share of the cores)."""
    return sorted(plans, key=lambda p: -walls.get(p.name, 0.0))


def train_resources(run: RunConfig) -> dict[str, float]:
    """What the run's Ray Train workers reserve together (its ``scaling``)."""
    scaling = run.scaling
    out = {"CPU": scaling.num_workers * scaling.cpus_per_worker}
    if scaling.use_gpu:
        out["GPU"] = scaling.num_workers * scaling.gpus_per_worker
    return out


def trial_run(
    cfg: StudyConfig, name: str, strategy: str, student: str, teacher: str | None, seed: int
) -> RunConfig:
    """base + the student's model and overrides + the strategy's loss + the seed (+ the
    teacher's scores)."""
    update: dict[str, Any] = {
        "name": name,
        "output_dir": str(cfg.study_dir / "trials"),
        "loss": cfg.strategies[strategy].model_dump(mode="json"),
        "train": {
            "seed": seed,
            "teacher_scores": str(teacher_scores_dir(cfg, teacher) / SCORES_DIR) if teacher else None,
        },
    }
    return validate(RunConfig, deep_merge(cfg.student_run(student).model_dump(mode="json"), update))


def teachers_used(plans: list[TrialPlan]) -> list[str]:
    return list(dict.fromkeys(p.teacher for p in plans if p.teacher))


def format_plan(plans: list[Any]) -> str:
    """One row per planned trial: its grid coordinates and the Ray resources it reserves."""

    def resources(r: dict[str, float]) -> str:
        return ", ".join(f"{k} {v:g}" for k, v in r.items())

    def memory(p: Any) -> str:
        run = p.run
        lora = f", LoRA r={run.model.lora.r}" if run.model.lora else ""
        return (
            f"{run.scaling.num_workers}w ZeRO-{run.deepspeed.zero_stage} "
            f"micro {run.train.micro_batch_groups}x{run.train.grad_accum}{lora}"
        )

    rows = [("trial", "strategy", "student", "teacher", "seed", "trial process", "train workers", "training")]
    rows += [
        (
            p.name,
            p.strategy,
            p.student,
            p.teacher or "-",
            str(p.seed),
            resources(p.resources),
            resources(p.train_resources),
            memory(p),
        )
        for p in plans
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(f"{v:<{w}}" for v, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )
