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

from rerank_ray.config import PROJECT_ROOT, ModelConfig, RunConfig
from rerank_ray.study.config import BiEncoderTeacher, CrossEncoderTeacher, ScoresTeacher, StudyConfig

# Looked up in the working directory first (a `ray job submit --working-dir .` upload), then in
# the project checkout this package was imported from; an installed wheel ships no bench/.
THROUGHPUT_FILES = (Path("bench") / "throughput.yaml", PROJECT_ROOT / "bench" / "throughput.yaml")
STAGES = ("train", "score", "evaluate")
# An entry's `precision`: fp32 (absent) or bf16 (run under model.autocast: bf16).
PRECISIONS = ("fp32", "bf16")


class ForecastError(ValueError):
    """The throughput table or the data cannot give a forecast; the message says what is missing."""


@dataclass(frozen=True)
class Throughput:
    pairs_per_s: float
    measured: bool  # False: interpolated from other sizes (or fp32 standing in for bf16)


@dataclass
class ThroughputTable:
    entries: list[dict[str, Any]]
    overhead_s: dict[str, float]
    hardware: dict[str, dict[str, Any]]

    @classmethod
    def load(cls, path: str | Path | None = None) -> ThroughputTable:
        """The table at `path`, else the first of :data:`THROUGHPUT_FILES` that exists."""
        found = [Path(path)] if path is not None else [p for p in THROUGHPUT_FILES if p.is_file()]
        if not found or not found[0].is_file():
            tried = [str(path)] if path is not None else [str(p) for p in THROUGHPUT_FILES]
            raise ForecastError(f"no throughput table at {' or '.join(tried)}; run from the project checkout")
        path = found[0]
        data = yaml.safe_load(path.read_text())
        for i, entry in enumerate(data["entries"]):
            missing = {"stage", "family", "layers", "hardware", "pairs_per_s", "measured"} - set(entry)
            if (
                missing
                or entry["stage"] not in STAGES
                or entry["hardware"] not in data["hardware"]
                or entry.get("precision", "fp32") not in PRECISIONS
            ):
                raise ForecastError(
                    f"{path}: entries[{i}] needs stage ({'/'.join(STAGES)}), family, layers, a hardware "
                    f"listed under `hardware`, pairs_per_s, measured, and a precision of "
                    f"{'/'.join(PRECISIONS)} if any; got {entry}"
                )
        return cls(entries=data["entries"], overhead_s=data.get("overhead_s", {}), hardware=data["hardware"])

    def default_hardware(self, gpu: bool) -> str | None:
        kind = "gpu" if gpu else "cpu"
        return next((name for name, h in self.hardware.items() if h.get("kind") == kind), None)

    def lookup(
        self, stage: str, family: str, layers: int, hardware: str, precision: str = "fp32"
    ) -> Throughput | None:
        """Pairs/s for (stage, family, layers, hardware, precision): measured, interpolated, or
        None. `precision` is ``bf16`` for a model run under bf16 autocast on the CPU
        (``model.autocast: bf16``; an entry's ``precision``, absent = fp32); with no bf16 entry
        for the stage, family and hardware, the fp32 rates stand in, marked as not measured."""

        # An entry measured while k runs shared the machine (``shared_by: k``) is scaled to the
        # machine alone: k times its rate.
        points = sorted(
            (e["layers"], 1.0 / (e["pairs_per_s"] * e.get("shared_by", 1)), e["measured"])
            for e in self.entries
            if (e["stage"], e["family"], e["hardware"], e.get("precision", "fp32"))
            == (stage, family, hardware, precision)
        )
        if not points and precision != "fp32":
            found = self.lookup(stage, family, layers, hardware)
            return None if found is None else Throughput(found.pairs_per_s, False)
        if not points:
            return None
        for n, spp, measured in points:
            if n == layers:
                return Throughput(1.0 / spp, measured)
        if len(points) == 1:
            n, spp, _ = points[0]
            return Throughput(1.0 / (spp * (layers + 1) / (n + 1)), False)
        below = [p for p in points if p[0] < layers]
        above = [p for p in points if p[0] > layers]
        a, b = (below[-1], above[0]) if below and above else (points[:2] if not below else points[-2:])
        spp = a[1] + (b[1] - a[1]) * (layers - a[0]) / (b[0] - a[0])
        # Extrapolating below the smallest size must not reach zero seconds per pair.
        return Throughput(1.0 / max(spp, min(p[1] for p in points) * 0.25), False)


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


def count_eval_pairs(cfg: StudyConfig) -> int:
    """Pairs reranked to evaluate one model on every suite of the study."""
    from rerank_ray.data.datasets import open_collection
    from rerank_ray.evaluation.evaluate import validation_collections
    from rerank_ray.evaluation.suites import get_suite

    total = 0
    for name in cfg.eval.suites:
        suite = get_suite(name, cfg.eval.defined())
        cut = cfg.eval.depth.get(name) or suite.depth
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
        family, layers, autocast = (
            plan.run.model.family,
            plan.run.model.layers(),
            plan.run.model.autocast,
        )
        stages = [
            estimator.stage("train", family, layers, train_pairs(plan.run, groups), autocast),
            estimator.stage("evaluate", family, layers, evaluate, autocast),
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

    def stage(self, stage: str, family: str, layers: int, pairs: int, autocast: str = "auto") -> StageCost:
        precision = "bf16" if autocast == "bf16" else "fp32"
        found = (
            None
            if self.hardware is None
            else self.table.lookup(stage, family, layers, self.hardware, precision)
        )
        suffix = " bf16" if precision == "bf16" else ""
        return StageCost(stage, pairs, found, f"{stage} {family} L{layers}{suffix} on {self.hardware or '?'}")


def _teacher(
    cfg: StudyConfig, name: str, est: _Estimator, groups: int, unique: int, evaluate: int
) -> RunForecast:
    spec = cfg.teachers[name]
    scoring = cfg.scoring
    score_cpus = scoring.actors * scoring.cpus_per_actor
    score_gpus = scoring.actors * scoring.gpus_per_actor
    if isinstance(spec, ScoresTeacher):
        return RunForecast(f"teacher {name}", [], 0.0, 0.0, 0.0)
    if isinstance(spec, BiEncoderTeacher):
        family, layers = "bi_encoder", ModelConfig(source=spec.source).layers()
        autocast = spec.autocast
        stages = []
    elif isinstance(spec, CrossEncoderTeacher) and spec.trains:
        run = cfg.teacher_run(name)
        family, layers, autocast = run.model.family, run.model.layers(), run.model.autocast
        stages = [est.stage("train", family, layers, train_pairs(run, groups), autocast)]
    else:
        assert isinstance(spec, CrossEncoderTeacher)
        model = spec.pretrained() if spec.source else _saved_model(spec.path)
        family, layers, autocast = model.family, model.layers(), model.autocast
        stages = []
    stages += [
        est.stage("evaluate", family, layers, evaluate, autocast),
        est.stage("score", family, layers, unique, autocast),
    ]
    trains = stages[0].stage == "train"
    run = cfg.teacher_run(name) if trains else None
    train_cpus = run.scaling.num_workers * run.scaling.cpus_per_worker if run else 0.0
    # One stage at a time holds the machine: the training workers, the evaluating driver, or
    # the scoring actors; the most of them is what the teacher reserves.
    cpus = max(1.0, score_cpus, train_cpus)
    return RunForecast(f"teacher {name}", stages, est.overhead if trains else 0.0, cpus, score_gpus)


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
