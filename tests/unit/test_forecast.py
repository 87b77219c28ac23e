"""The dry run's cost forecast: throughput lookup, pair counts, and the quickstart against its
recorded actual cost (README: 40m34s; teacher ce-l6 1,286 s)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rerank_ray.config import load_config
from rerank_ray.study.config import load_study
from rerank_ray.study.forecast import (
    ThroughputTable,
    count_groups,
    forecast_study,
    format_forecast,
    train_pairs,
)
from rerank_ray.study.plan import longest_first, plan_study

HW = "cpu-2core"


@pytest.fixture(scope="module")
def table():
    return ThroughputTable.load()


def test_lookup_measured_interpolated_and_missing(table):
    assert table.lookup("train", "encoder", 6, HW).pairs_per_s == 10.8
    assert table.lookup("train", "encoder", 6, HW).measured
    # Size 2 was measured at 11.3 pairs/s with two trials sharing the machine (shared_by: 2):
    # 22.6 alone. Between sizes 2 and 6 (10.8, alone): linear in seconds per pair.
    assert table.lookup("train", "encoder", 2, HW).pairs_per_s == pytest.approx(22.6)
    l3 = table.lookup("train", "encoder", 3, HW)
    assert not l3.measured
    assert 1 / l3.pairs_per_s == pytest.approx(1 / 22.6 + (1 / 10.8 - 1 / 22.6) / 4)
    # One measured size: seconds per pair scale with (layers + 1).
    assert table.lookup("evaluate", "encoder", 1, HW).pairs_per_s == pytest.approx(42.2 * 7 / 2)
    assert table.lookup("train", "decoder", 24, HW) is None
    assert table.lookup("train", "encoder", 6, "h100") is None
    assert table.default_hardware(gpu=False) == HW and table.default_hardware(gpu=True) is None


def test_a_bf16_run_is_forecast_from_bf16_entries_else_from_fp32_marked_unmeasured():
    entry = {"stage": "train", "family": "encoder", "hardware": HW, "measured": True}
    table = ThroughputTable(
        entries=[{**entry, "layers": 6, "pairs_per_s": 10.0}, {**entry, "layers": 2, "pairs_per_s": 30.0}],
        overhead_s={},
        hardware={HW: {"kind": "cpu"}},
    )
    fallback = table.lookup("train", "encoder", 6, HW, "bf16")
    assert (fallback.pairs_per_s, fallback.measured) == (10.0, False)
    table.entries.append({**entry, "layers": 6, "pairs_per_s": 15.0, "precision": "bf16"})
    assert table.lookup("train", "encoder", 6, HW, "bf16").pairs_per_s == 15.0
    assert table.lookup("train", "encoder", 6, HW, "bf16").measured
    assert table.lookup("train", "encoder", 6, HW).pairs_per_s == 10.0  # fp32 ignores bf16 entries


def test_width_lora_and_max_length_pick_their_own_entries():
    # A 768-wide model never takes the 384-wide MiniLM rates (a layer costs ~4x); a LoRA model
    # trains at LoRA entries' rates but evaluates as the merged model; entries measured at the
    # model's max length win over others of the same key.
    entry = {"family": "encoder", "hardware": HW, "measured": True, "layers": 6}
    table = ThroughputTable(
        entries=[
            {**entry, "stage": "train", "pairs_per_s": 20.0},
            {**entry, "stage": "train", "hidden": 768, "layers": 12, "pairs_per_s": 4.0},
            {**entry, "stage": "train", "family": "decoder", "pairs_per_s": 2.0},
            {**entry, "stage": "train", "family": "decoder", "lora": True, "pairs_per_s": 3.0},
            {**entry, "stage": "evaluate", "family": "decoder", "pairs_per_s": 9.0},
            {**entry, "stage": "evaluate", "max_length": 256, "pairs_per_s": 40.0},
            {**entry, "stage": "evaluate", "max_length": 128, "pairs_per_s": 90.0},
        ],
        overhead_s={},
        hardware={HW: {"kind": "cpu"}},
    )
    assert table.lookup("train", "encoder", 12, HW, hidden=768).pairs_per_s == 4.0
    assert table.lookup("train", "encoder", 6, HW, hidden=768).pairs_per_s == pytest.approx(4.0 * 13 / 7)
    assert table.lookup("train", "encoder", 6, HW).pairs_per_s == 20.0
    assert table.lookup("train", "decoder", 6, HW, lora=True).pairs_per_s == 3.0
    assert table.lookup("train", "decoder", 6, HW).pairs_per_s == 2.0
    assert table.lookup("evaluate", "decoder", 6, HW, lora=True).pairs_per_s == 9.0
    assert table.lookup("evaluate", "encoder", 6, HW, max_length=128).pairs_per_s == 90.0
    assert table.lookup("evaluate", "encoder", 6, HW, max_length=256).pairs_per_s == 40.0
    # A width with no entry (a tiny test model) falls back to the 384-wide rates, unmeasured:
    # the byo study's forecast column read "–" without it.
    tiny = table.lookup("train", "encoder", 6, HW, hidden=32)
    assert (tiny.pairs_per_s, tiny.measured) == (20.0, False)


def test_the_size_study_is_forecast_within_its_three_hour_budget(table):
    # issue 22: at most 3 hours on 2 cores, forecast by the dry run, every stage measured.
    cfg = load_study([Path(__file__).resolve().parents[2] / "experiments" / "sizes.yaml"])
    forecast = forecast_study(cfg, plan_study(cfg), table)
    assert forecast.wall_s is not None and forecast.wall_s <= 3 * 3600
    assert not [r.name for r in (*forecast.teachers, *forecast.trials) if r.wall_s is None]


@pytest.mark.parametrize("bad", ["precision: fp16", "stage: infer", "hardware: tpu"])
def test_a_malformed_table_entry_is_refused_naming_the_fields(tmp_path, bad):
    from rerank_ray.study.forecast import ForecastError

    key = bad.split(":")[0]
    fields = {"stage": "train", "family": "encoder", "layers": 6, "hardware": HW, "pairs_per_s": 1.0}
    entry = ", ".join(f"{k}: {v}" for k, v in fields.items() if k != key)
    (tmp_path / "t.yaml").write_text(
        f"hardware:\n  {HW}: {{kind: cpu}}\nentries:\n  - {{{entry}, {bad}, measured: true}}\n"
    )
    with pytest.raises(ForecastError, match="precision of fp32/bf16"):
        ThroughputTable.load(tmp_path / "t.yaml")


def test_train_pairs_counts_steps_and_caps_at_max_steps():
    run = load_config(overrides=["train.micro_batch_groups=4", "groups.group_size=8"])
    assert train_pairs(run, 660) == 165 * 4 * 8
    two_epochs = load_config(overrides=["train.micro_batch_groups=4", "train.epochs=2", "train.grad_accum=2"])
    # 660 groups / 8 per step: 82 steps an epoch, as the trainer rounds down (not 83).
    assert train_pairs(two_epochs, 660) == 2 * 82 * 8 * 8
    assert train_pairs(load_config(overrides=["train.max_steps=2"]), 660) == 2 * 2 * 8


TINY_SCIFACT = [
    "data.train=[fixtures/tiny-scifact]",
    "data.train_split=train",
    "data.first_stage=bm25-top10",
    "groups.depth=10",
    "groups.group_size=4",
    "groups.groups_per_query=2",
    "groups.positive_min_label=1",
]


# Held-out validation queries give no group (the forecast counted them before 2026-12-02).
@pytest.mark.parametrize("validation", [[], ["data.validation=0.5"]])
def test_groups_count_matches_build_groups(tmp_path, data_root, validation):
    from rerank_ray.data.groups import build_groups

    run = load_config(overrides=TINY_SCIFACT + validation)
    groups, unique = count_groups(run)
    import pandas as pd

    from rerank_ray.teacher.provenance import pairs_from_groups

    built = pd.read_parquet(build_groups(run, tmp_path).path)
    assert groups == len(built) and unique == len(pairs_from_groups(built))


def _tiny_dl19_with_a_repeated_run_entry(tmp_path, monkeypatch, data_root) -> list[str]:
    """Overrides for a copy of tiny-dl19 whose run lists its first entry twice (the repeat
    ranked last)."""
    import shutil

    monkeypatch.setenv("IR_DATASETS_HOME", str(tmp_path / "irds"))
    name = f"tiny-dup-{tmp_path.name}"  # ir_datasets ids are process-global
    folder = tmp_path / "root" / name
    shutil.copytree(Path(data_root) / "fixtures" / "tiny-dl19", folder)
    run = folder / "bm25-top20.test.run"
    lines = run.read_text().splitlines()
    cols = lines[0].split()
    cols[3], cols[4] = "99", "0.0"
    run.write_text("\n".join([*lines, " ".join(cols)]) + "\n")
    return [
        f"data.root={tmp_path / 'root'}",
        f"data.train=[{name}]",
        "data.train_split=test",
        "data.first_stage=bm25-top20",
        "groups.depth=40",
        "groups.group_size=8",
    ]


def test_the_dry_run_refuses_a_repeated_run_entry_as_the_real_build_does(tmp_path, monkeypatch, data_root):
    """With ``data.duplicate_run_entries: error`` the count fails with the build's own error;
    with ``dedupe`` (the default) it counts what the build writes."""
    import pandas as pd

    from rerank_ray.data.datasets import DataError
    from rerank_ray.data.groups import build_groups
    from rerank_ray.teacher.provenance import pairs_from_groups

    overrides = _tiny_dl19_with_a_repeated_run_entry(tmp_path, monkeypatch, data_root)
    strict = load_config(overrides=[*overrides, "data.duplicate_run_entries=error"])
    with pytest.raises(DataError, match="listed twice") as real:
        build_groups(strict, tmp_path / "groups")
    with pytest.raises(DataError, match="listed twice") as dry:
        count_groups(strict)
    assert str(dry.value) == str(real.value)

    lenient = load_config(overrides=overrides)
    groups, unique = count_groups(lenient)
    built = pd.read_parquet(build_groups(lenient, tmp_path / "groups").path)
    assert groups == len(built) > 0 and unique == len(pairs_from_groups(built))


def test_the_dry_run_refuses_data_that_gives_no_group_as_the_real_build_does(tmp_path, data_root):
    from rerank_ray.data.datasets import DataError
    from rerank_ray.data.groups import build_groups

    run = load_config(overrides=[*TINY_SCIFACT, "groups.positive_min_label=9"])
    with pytest.raises(DataError, match="no training groups") as real:
        build_groups(run, tmp_path / "groups")
    with pytest.raises(DataError, match="no training groups") as dry:
        count_groups(run)
    assert str(dry.value) == str(real.value)


def test_the_validation_suite_is_counted_over_the_held_out_queries(data_root):
    from rerank_ray.evaluation.evaluate import validation_collections
    from rerank_ray.study.config import StudyConfig
    from rerank_ray.study.forecast import count_eval_pairs

    base = load_config(overrides=TINY_SCIFACT + ["data.validation=0.5"])
    cfg = StudyConfig.model_validate(
        {
            "base": base.model_dump(mode="json"),
            "students": {"s": {}},
            "strategies": ["contrastive"],
            "eval": {"in_domain": ["validation"], "out_of_domain": [], "depth": {"validation": 3}},
        }
    )
    (held_out,) = validation_collections(base.data)
    assert held_out.run
    assert count_eval_pairs(cfg) == sum(min(3, len(r)) for r in held_out.run.values())


def test_quickstart_forecast_is_within_30_percent_of_its_recorded_cost(table, data_root):
    # The quickstart design whose cost was recorded (experiments/quickstart.yaml has changed since).
    cfg = load_study([Path(__file__).parent / "data" / "quickstart-2026-11-27.yaml"])
    forecast = forecast_study(cfg, plan_study(cfg), table, price_per_hour=2.0)
    assert (forecast.groups, forecast.unique_pairs) == (660, 3936)  # issue 10: 3,936 unique pairs
    teacher = forecast.teachers[0]
    # 2 epochs x 660 groups x 8 at 10.8 pairs/s; 9,550 evaluation pairs at 42.2; 3,936 scored
    # at 24.0; 38 s start-up.
    assert [teacher.pairs(s) for s in ("train", "score", "evaluate")] == [10560, 3936, 9550]
    assert teacher.wall_s == pytest.approx(38 + 10560 / 10.8 + 9550 / 42.2 + 3936 / 24.0)
    assert teacher.wall_s == pytest.approx(1286, rel=0.3)
    assert forecast.wall_s == pytest.approx(40 * 60 + 34, rel=0.3)
    # Two trials at a time share the 2 cores: each runs twice as long as alone, and the trials'
    # total is the sum of their times alone.
    alone = [t.wall_s / 2 for t in forecast.trials]
    assert [t.sharing for t in forecast.trials] == [2, 2, 2, 2]
    assert forecast.wall_s == pytest.approx(teacher.wall_s + sum(alone))
    text = format_forecast(forecast)
    assert "total: 4 trial(s), 2 at a time" in text and "per CPU-hour" in text


def test_the_bf16_quickstart_forecast_is_within_30_percent_of_its_measured_cost(table, data_root):
    # experiments/quickstart.yaml as run on 2026-12-02 14:49-15:03 (13m17s; README). Its bf16
    # entries in bench/throughput.yaml were read off that same run, so this checks the formula
    # (sharing, start-up, the precision lookup), not the rates independently.
    cfg = load_study([Path(__file__).parent / "data" / "quickstart-2026-12-02-bf16.yaml"])
    forecast = forecast_study(cfg, plan_study(cfg), table)
    assert all(stage.throughput.measured for run in forecast.trials for stage in run.stages)
    assert forecast.wall_s == pytest.approx(13 * 60 + 17, rel=0.3)
    l6 = [t.wall_s for t in forecast.trials if "minilm-l6" in t.name]
    assert l6 == pytest.approx([448, 449], rel=0.3)  # the trials' measured wall times


def test_a_bi_encoder_teacher_is_forecast_from_the_entry_bench_writes(table, data_root, tmp_path):
    # bench/ is a folder of scripts, not a package: load the module from its file.
    import importlib.util
    import sys

    from rerank_ray.config import PROJECT_ROOT

    path = PROJECT_ROOT / "bench" / "teacher_throughput.py"
    spec = importlib.util.spec_from_file_location("teacher_throughput", path)
    bench = importlib.util.module_from_spec(spec)
    sys.modules["teacher_throughput"] = bench
    try:
        spec.loader.exec_module(bench)
    finally:
        del sys.modules["teacher_throughput"]
    cfg = load_study([PROJECT_ROOT / "experiments" / "quickstart.yaml"])
    (name,) = [n for n, t in cfg.teachers.items() if t.kind == "bi_encoder"]
    teacher = cfg.teachers[name].scorer().model_dump()
    entry = bench.throughput_entry(teacher, 123.4, hardware=HW, date="2026-12-02", note="test")
    assert (entry["stage"], entry["family"], entry["layers"]) == ("score", "bi_encoder", 6)
    assert entry.get("precision", "fp32") == ("bf16" if teacher["autocast"] == "bf16" else "fp32")
    with_entry = ThroughputTable(
        entries=[*table.entries, entry], overhead_s=table.overhead_s, hardware=table.hardware
    )
    forecast = forecast_study(cfg, plan_study(cfg), with_entry)
    (bi,) = [t for t in forecast.teachers if t.name == f"teacher {name}"]
    score = next(s for s in bi.stages if s.stage == "score")
    assert score.throughput is not None and score.throughput.pairs_per_s == 123.4
    assert score.seconds == pytest.approx(forecast.unique_pairs / 123.4)
    assert bi.wall_s is not None
    assert "score bi_encoder" not in format_forecast(forecast)
    # The line bench prints, pasted under `entries:`, loads as that entry.
    line = bench.yaml_line(entry)
    assert line.startswith("  - {stage: score, family: bi_encoder, layers: 6,") and "\n" not in line
    (tmp_path / "t.yaml").write_text(f"hardware:\n  {HW}: {{kind: cpu}}\nentries:\n{line}\n")
    assert ThroughputTable.load(tmp_path / "t.yaml").entries == [entry]


def test_the_redesigned_quickstart_forecast_is_within_30_percent_of_its_measured_run(table, data_root):
    """experiments/quickstart.yaml as run on 2026-12-02 (README: `make quickstart`, the study done in
    42m59s = 2,579 s; 6-layer trials 1,475 and 1,526 s, 2-layer 556 and 599 s, two at a time)."""
    cfg = load_study([Path(__file__).parent / "data" / "quickstart-2026-12-02.yaml"])
    forecast = forecast_study(cfg, plan_study(cfg), table)
    assert forecast.wall_s == pytest.approx(2579, rel=0.3)
    walls = forecast.walls()
    assert walls["contrastive+minilm-l2+s0"] == pytest.approx(556, rel=0.3)


def test_tune_gets_the_quickstarts_6_layer_trials_first(table, data_root):
    """Longest-first hands Tune the two 6-layer trials first, then the 2-layer ones, ties in
    plan order. (Plan order interleaves sizes; for these four trials on 2 slots it happened to
    balance the slots too, 31 min each on 2026-12-02, but a grid with more long trials than
    slots would start a long one last, to run alone on its share of the cores.)"""
    from rerank_ray.config import PROJECT_ROOT

    cfg = load_study([PROJECT_ROOT / "experiments" / "quickstart.yaml"])
    plans = plan_study(cfg)
    assert [p.student for p in plans] == ["minilm-l6", "minilm-l2", "minilm-l6", "minilm-l2"]
    order = longest_first(plans, forecast_study(cfg, plans, table).walls())
    assert [(p.student, p.strategy) for p in order] == [
        ("minilm-l6", "contrastive"),
        ("minilm-l6", "distillation"),
        ("minilm-l2", "contrastive"),
        ("minilm-l2", "distillation"),
    ]
    # No forecast (no throughput table): plan order.
    assert longest_first(plans, {}) == plans
