"""What a study will cost, before it starts: pairs per stage, wall time, CPU/GPU-hours, money.

``forecast_study(cfg, plans, table)`` counts, from the data itself (no model is loaded):

- the training groups and their unique pairs, by taking the groups sampler's own walk over
  the data (``data.groups.sample_groups``) without reading documents, so the counts (and the
  errors) are the ones ``build_groups`` will give;
- per trial, the training pairs: ``steps x micro_batch_groups x grad_accum x workers x
  group_size``, with the steps the trainer takes (``train.driver.optimizer_steps``:
  ``min(train.max_steps, epochs x floor(groups / groups per step))``, as the shards and
  micro-batches round down);
- per evaluated model, the evaluation pairs: each suite's first-stage candidates down to its
  rerank depth;
- per teacher, the scoring pairs (the groups' unique pairs) plus its own training (a
  study-trained cross-encoder) and evaluation; a ``scores`` teacher costs nothing.

Time = pairs / throughput, per stage, plus a fixed start-up per training run, with the
throughput looked up in ``bench/throughput.yaml`` (:class:`ThroughputTable`) by stage, model
family, layers and hardware. A size that was not measured is interpolated linearly in seconds
per pair between the nearest measured sizes of the same stage and family (with one measured
size, seconds per pair are scaled by ``(layers + 1) / (measured layers + 1)``: embeddings and
head count as about one layer); such figures are marked ``~``. A stage with no entry for the
family and hardware has no time (``None``), and the forecast lists what is missing.

Concurrency: on ``kind: cpu`` hardware the table's rates were measured with the whole machine
(every core), so trials running k at a time (k = ``tune.max_concurrent_trials``, at most the
number of trials) share it and each runs k times slower than alone; the trials' total wall time
is then their sum alone, not that sum / k (the measurement behind this is in
docs/BENCHMARKS.md, "Measurements behind code constants"). On GPU hardware each trial holds its
own devices, so k trials run side by side at the measured rates.

Resources: CPU-hours = wall x (the trial process's CPUs + the train workers' CPUs) while
training, like the actual cost in ``study/trial.py``; GPU-hours likewise with GPUs. The study's
wall time is the teachers' (they run one after another) plus the trials' spread over
``tune.max_concurrent_trials``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rerank_ray.config import ModelConfig, RunConfig
from rerank_ray.study.config import (
    BestOfTeacher,
    BiEncoderTeacher,
    CrossEncoderTeacher,
    ScoresTeacher,
    StudyConfig,
)
from rerank_ray.study.throughput import (  # noqa: F401  (re-exported)
    STAGES,
    THROUGHPUT_FILES,
    ForecastError,
    Throughput,
    ThroughputTable,
)


@dataclass
class StageCost:
    stage: str
    pairs: int
    throughput: Throughput | None
    key: str  # "train encoder L6" : what was looked up

    @property
    def seconds(self) -> float | None:
        return None if self.throughput is None else self.pairs / self.throughput.pairs_per_s


@dataclass
class RunForecast:
    """One trial or teacher: its stages, start-up, and the resources it holds."""

    name: str
    stages: list[StageCost]
    overhead_s: float
    cpus: float
    gpus: float
    missing: list[str] = field(default_factory=list)
    # How many runs share the hardware the rates were measured on (see the module docstring).
    sharing: int = 1

    def pairs(self, stage: str) -> int:
        return sum(s.pairs for s in self.stages if s.stage == stage)

    @property
    def wall_s(self) -> float | None:
        if any(s.seconds is None for s in self.stages):
            return None
        return (self.overhead_s + sum(s.seconds or 0.0 for s in self.stages)) * self.sharing

    @property
    def interpolated(self) -> bool:
        return any(s.throughput is not None and not s.throughput.measured for s in self.stages)

    def hours(self) -> tuple[float | None, float | None]:
        """(CPU-hours, GPU-hours)."""
        wall = self.wall_s
        return (None, None) if wall is None else (wall * self.cpus / 3600, wall * self.gpus / 3600)


@dataclass
class StudyForecast:
    hardware: str | None
    groups: int
    unique_pairs: int
    teachers: list[RunForecast]
    trials: list[RunForecast]
    concurrency: int
    price_per_hour: float | None = None

    @property
    def wall_s(self) -> float | None:
        walls = [r.wall_s for r in self.teachers + self.trials]
        if any(w is None for w in walls):
            return None
        teachers = sum(r.wall_s or 0.0 for r in self.teachers)
        trials = sum(r.wall_s or 0.0 for r in self.trials)
        return teachers + trials / self.concurrency

    def walls(self) -> dict[str, float]:
        """Forecast wall seconds by run name (a trial's name; ``teacher <name>``), where known."""
        return {r.name: r.wall_s for r in self.teachers + self.trials if r.wall_s is not None}

    def to_json(self) -> dict[str, Any]:
        runs = {}
        for run in self.teachers + self.trials:
            cpu_h, gpu_h = run.hours()
            runs[run.name] = {
                **{f"{stage}_pairs": run.pairs(stage) for stage in STAGES},
                "wall_s": run.wall_s,
                "cpu_hours": cpu_h,
                "gpu_hours": gpu_h,
                "interpolated": run.interpolated,
            }
        return {
            "hardware": self.hardware,
            "groups": self.groups,
            "unique_pairs": self.unique_pairs,
            "wall_s": self.wall_s,
            "runs": runs,
        }


# ---------------------------------------------------------------------------------------------
# Counting pairs from the data.


def count_groups(run: RunConfig) -> tuple[int, int]:
    """(groups, unique (query_id, doc_id) pairs) that ``build_groups(run)`` will write: the
    sampler's own walk over the data (``data.groups.sample_groups``), without document texts,
    so a run the real build refuses (e.g. a repeated run entry with
    ``data.duplicate_run_entries: error``) is refused here with the same error."""
    from rerank_ray.data.groups import GroupStats, sample_groups

    stats = GroupStats()
    pairs = 0
    for _, _, _, sampled in sample_groups(run, stats):
        pairs += len({doc_id for group in sampled for doc_id in group})
    return stats.groups_written, pairs


def count_eval_pairs(cfg: StudyConfig, suites: dict[str, int | None] | None = None) -> int:
    """Pairs reranked to evaluate one model on every suite of the study (or on `suites`:
    name -> depth, None = the suite's own)."""
    from rerank_ray.data.datasets import open_collection
    from rerank_ray.evaluation.evaluate import validation_collections
    from rerank_ray.evaluation.suites import get_suite

    total = 0
    depths = suites if suites is not None else {name: cfg.eval.depth.get(name) for name in cfg.eval.suites}
    for name, depth in depths.items():
        suite = get_suite(name, cfg.eval.defined())
        cut = depth or suite.depth
        if suite.held_out:  # the training queries held out by data.validation
            collections = validation_collections(cfg.base.data)
        else:
            collections = [
                open_collection(
                    suite.dataset,
                    root=cfg.base.data.root,
                    split=suite.split,
                    first_stage=suite.first_stage,
                    run_file=cfg.eval.run_files.get(name, suite.run_file),
                )
            ]
        total += sum(min(cut, len(ranked)) for c in collections for ranked in c.run.values())
    return total


def train_pairs(run: RunConfig, groups: int) -> int:
    """Training pairs of `run` over `groups` groups (see the module docstring), with the
    trainer's own step count (``train.driver.optimizer_steps``)."""
    from rerank_ray.train.driver import optimizer_steps

    t = run.train
    _, steps = optimizer_steps(run, groups)
    return steps * t.micro_batch_groups * t.grad_accum * run.scaling.num_workers * run.groups.group_size


# ---------------------------------------------------------------------------------------------
# The forecast.


def forecast_study(
    cfg: StudyConfig,
    plans: list[Any],
    table: ThroughputTable,
    *,
    hardware: str | None = None,
    price_per_hour: float | None = None,
) -> StudyForecast:
    """The forecast of every teacher the plans use and every trial (``study.plan.TrialPlan``)."""
    from rerank_ray.study.plan import teachers_used

    hardware = hardware or table.default_hardware(cfg.base.scaling.use_gpu)
    if hardware is not None and hardware not in table.hardware:
        raise ForecastError(
            f"hardware {hardware!r} is not in the throughput table; known: {sorted(table.hardware)}"
        )
    groups, unique = count_groups(cfg.base)
    evaluate = count_eval_pairs(cfg)
    estimator = _Estimator(table, hardware)
    teachers = [_teacher(cfg, name, estimator, groups, unique, evaluate) for name in teachers_used(plans)]
    kind = table.hardware.get(hardware, {}).get("kind") if hardware else None
    sharing = min(cfg.tune.max_concurrent_trials, len(plans)) if kind == "cpu" else 1
    trials = []
    for plan in plans:
        model = plan.run.model
        stages = [
            estimator.stage("train", model.family, model, train_pairs(plan.run, groups)),
            estimator.stage("evaluate", model.family, model, evaluate),
        ]
        cpus = plan.resources.get("CPU", 0.0) + plan.train_resources.get("CPU", 0.0)
        gpus = plan.resources.get("GPU", 0.0) + plan.train_resources.get("GPU", 0.0)
        trials.append(RunForecast(plan.name, stages, estimator.overhead, cpus, gpus, sharing=max(sharing, 1)))
    return StudyForecast(
        hardware, groups, unique, teachers, trials, cfg.tune.max_concurrent_trials, price_per_hour
    )


@dataclass
class _Estimator:
    table: ThroughputTable
    hardware: str | None

    @property
    def overhead(self) -> float:
        return float(self.table.overhead_s.get(self.hardware, 0.0)) if self.hardware else 0.0

    def stage(
        self, stage: str, family: str, model: ModelConfig, pairs: int, max_length: int | None = None
    ) -> StageCost:
        """`pairs` of `stage` by `model` run as `family` (``bi_encoder`` for a bi-encoder
        teacher, whose document length is `max_length`), looked up by the model's layers and
        width as built (``model_shape``)."""
        from rerank_ray.models.sources import model_shape

        shape = model_shape(model)
        precision = "bf16" if model.autocast == "bf16" else "fp32"
        found = (
            None
            if self.hardware is None
            else self.table.lookup(
                stage,
                family,
                shape.layers,
                self.hardware,
                precision,
                hidden=shape.hidden,
                lora=model.lora is not None,
            )
        )
        suffix = " bf16" if precision == "bf16" else ""
        width = ("" if shape.hidden == 384 else f" h{shape.hidden}") + (" LoRA" if model.lora else "")
        key = f"{stage} {family} L{shape.layers}{width}{suffix} on {self.hardware or '?'}"
        return StageCost(stage, pairs, found, key)


def _teacher(
    cfg: StudyConfig, name: str, est: _Estimator, groups: int, unique: int, evaluate: int
) -> RunForecast:
    spec = cfg.teachers[name]
    scoring = cfg.scoring
    score_cpus = scoring.actors * scoring.cpus_per_actor
    score_gpus = scoring.actors * scoring.gpus_per_actor
    if isinstance(spec, ScoresTeacher):
        return RunForecast(f"teacher {name}", [], 0.0, 0.0, 0.0)
    if isinstance(spec, BestOfTeacher):
        return _best_of(cfg, name, spec, est, groups, unique, evaluate)
    if isinstance(spec, BiEncoderTeacher):
        family = "bi_encoder"
        model = ModelConfig(source=spec.source, autocast=spec.autocast, max_length=spec.max_length)
        stages = []
    elif isinstance(spec, CrossEncoderTeacher) and spec.trains:
        run = cfg.teacher_run(name)
        family, model = run.model.family, run.model
        stages = [est.stage("train", family, model, train_pairs(run, groups))]
    else:
        assert isinstance(spec, CrossEncoderTeacher)
        model = spec.pretrained() if spec.source else _saved_model(spec.path)
        family, stages = model.family, []
    stages += [
        est.stage("evaluate", family, model, evaluate),
        est.stage("score", family, model, unique),
    ]
    trains = stages[0].stage == "train"
    run = cfg.teacher_run(name) if trains else None
    train_cpus = run.scaling.num_workers * run.scaling.cpus_per_worker if run else 0.0
    # One stage at a time holds the machine: the training workers, the evaluating driver, or
    # the scoring actors; the most of them is what the teacher reserves.
    cpus = max(1.0, score_cpus, train_cpus)
    return RunForecast(f"teacher {name}", stages, est.overhead if trains else 0.0, cpus, score_gpus)


def _best_of(
    cfg: StudyConfig, name: str, spec: BestOfTeacher, est: _Estimator, groups: int, unique: int, evaluate: int
) -> RunForecast:
    """A best_of teacher: every candidate trained (if the study trains it) and evaluated on the
    selection suite, then the costliest candidate's evaluation and scoring (the choice is not
    known before the run)."""
    picks = {c: _teacher(cfg, c, est, groups, unique, evaluate) for c in spec.candidates}
    pairs = count_eval_pairs(cfg, {spec.suite: spec.depth})
    stages = [s for r in picks.values() for s in r.stages if s.stage == "train"]
    for cand, run in picks.items():
        ev = next(s for s in run.stages if s.stage == "evaluate")
        stages.append(StageCost("evaluate", pairs, ev.throughput, f"{ev.key} ({cand} on {spec.suite})"))
    costliest = max(picks.values(), key=lambda r: r.wall_s or 0.0)
    stages += [s for s in costliest.stages if s.stage != "train"]
    return RunForecast(f"teacher {name}", stages, costliest.overhead_s, costliest.cpus, costliest.gpus)


def _saved_model(path: str | None) -> ModelConfig:
    from rerank_ray.models.base import META_FILE

    meta = yaml.safe_load((Path(str(path)) / META_FILE).read_text())  # JSON is YAML
    # The saved folder holds the (possibly truncated) backbone's own config.json.
    return ModelConfig.model_validate({**meta["model"], "source": str(path)})


# ---------------------------------------------------------------------------------------------
# Printing.


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _hours(value: float | None) -> str:
    return "?" if value is None else f"{value:.3f}"


def format_forecast(forecast: StudyForecast) -> str:
    """The dry run's cost table: one row per teacher and trial, then the study's total."""
    price = forecast.price_per_hour
    header = ["run", "train pairs", "score pairs", "eval pairs", "wall", "CPU-h", "GPU-h"]
    header += ["cost"] if price is not None else []
    rows, missing = [], set()
    for run in forecast.teachers + forecast.trials:
        cpu_h, gpu_h = run.hours()
        mark = "~" if run.interpolated else ""
        row = [run.name, *(f"{run.pairs(s):,}" for s in ("train", "score", "evaluate"))]
        row += [mark + _duration(run.wall_s), _hours(cpu_h), _hours(gpu_h)]
        if price is not None:
            row.append("?" if cpu_h is None else f"{price * (gpu_h or cpu_h):.2f}")
        rows.append(row)
        missing |= {s.key for s in run.stages if s.throughput is None}
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        f"Cost forecast on {forecast.hardware or 'unknown hardware'} (throughput from "
        f"bench/throughput.yaml; ~ = interpolated from other model sizes). Training groups: "
        f"{forecast.groups:,} ({forecast.unique_pairs:,} unique pairs).",
        "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)),
    ]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.append(_total(forecast))
    if missing:
        lines.append(
            "No throughput measured for: " + "; ".join(sorted(missing)) + ". Measure it (bench/) and "
            "add it to bench/throughput.yaml, or pass --hardware."
        )
    return "\n".join(lines)


def _total(forecast: StudyForecast) -> str:
    runs = forecast.teachers + forecast.trials
    hours = [r.hours() for r in runs]
    if any(c is None for c, _ in hours):
        return f"total: {len(forecast.trials)} trial(s); wall time unknown (see below)"
    cpu_h = sum(c or 0.0 for c, _ in hours)
    gpu_h = sum(g or 0.0 for _, g in hours)
    text = (
        f"total: {len(forecast.trials)} trial(s), {forecast.concurrency} at a time: "
        f"{_duration(forecast.wall_s)} wall, {cpu_h:.2f} CPU-hours, {gpu_h:.2f} GPU-hours"
    )
    if forecast.price_per_hour is not None:
        billed = gpu_h if gpu_h else cpu_h
        unit = "GPU" if gpu_h else "CPU"
        text += f", {forecast.price_per_hour * billed:.2f} at {forecast.price_per_hour:g} per {unit}-hour"
    return text
