"""StudyConfig loading, name checks and the trial plan (no Ray)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rerank_ray.config import ConfigError
from rerank_ray.study.config import StudentSpec, StudyConfig, load_study
from rerank_ray.study.plan import plan_study

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"

STUDY = {
    "name": "s",
    "base": {"model": {"max_length": 128}, "loss": {"teacher_temperature": 2.0}},
    "teachers": {
        "ce-l6": {"kind": "cross_encoder", "model": {"num_layers": 6}, "overrides": {"train": {"epochs": 2}}},
        "bi": {"kind": "bi_encoder"},
    },
    "students": {"l1": {"num_layers": 1}, "l2": {"num_layers": 2, "max_length": 64}},
    "strategies": ["contrastive", "distillation"],
    "seeds": [0, 1],
    "eval": {"in_domain": ["dl19"], "out_of_domain": ["scifact"], "depth": {"scifact": 20}},
}


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_students_strategies_and_teachers_merge_over_base(tmp_path):
    cfg = load_study([write(tmp_path, STUDY)])
    assert cfg.students["l1"].model.max_length == 128 and cfg.students["l1"].model.num_layers == 1
    assert cfg.students["l2"].model.max_length == 64
    assert cfg.strategies["distillation"].name == "distillation"
    assert cfg.strategies["distillation"].teacher_temperature == 2.0
    teacher = cfg.teacher_run("ce-l6")
    assert teacher.loss.name == "contrastive" and teacher.model.num_layers == 6
    assert teacher.model.max_length == 128 and teacher.train.epochs == 2
    # A dumped config reloads to the same thing.
    assert StudyConfig.model_validate(cfg.to_dict()) == cfg


def test_plan_crosses_teachers_only_for_teacher_strategies(tmp_path):
    plans = plan_study(load_study([write(tmp_path, STUDY)]))
    # contrastive: 2 students x 2 seeds; distillation: 2 students x 2 teachers x 2 seeds.
    assert len(plans) == 4 + 8
    names = [p.name for p in plans]
    assert len(set(names)) == len(names)
    assert "contrastive+l1+s0" in names and "distillation+l2+bi+s1" in names
    distil = next(p for p in plans if p.name == "distillation+l1+ce-l6+s1")
    assert distil.run.loss.name == "distillation" and distil.run.train.seed == 1
    assert str(distil.run.train.teacher_scores).endswith("teachers/ce-l6/scores/scores")
    contrastive = next(p for p in plans if p.strategy == "contrastive")
    assert contrastive.teacher is None and contrastive.run.train.teacher_scores is None
    assert contrastive.tags()["teacher"] == "none"


def test_grid_blocks_select_combinations(tmp_path):
    study = {
        **STUDY,
        "students": {**STUDY["students"], "l6": {"num_layers": 6}},
        "grid": [
            {"students": ["l1"], "teachers": ["bi"], "seeds": [0]},
            {"strategies": ["distillation"], "students": ["l6"], "teachers": ["ce-l6"], "seeds": [0]},
        ],
    }
    names = [p.name for p in plan_study(load_study([write(tmp_path, study)]))]
    assert names == ["contrastive+l1+s0", "distillation+l1+bi+s0", "distillation+l6+ce-l6+s0"]


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("grid=[{students: [l1, minilm-l9]}]", "unknown name 'minilm-l9'; known students: l1, l2"),
        ("grid=[{teachers: [cross]}]", "known teachers: ce-l6, bi"),
        (
            "strategies=[contrastive, distilation]",
            "known strategies: contrastive, distillation, mix, margin_mse",
        ),
        ("eval.in_domain=[dl99]", "eval.in_domain: Value error, unknown evaluation suite(s) ['dl99']"),
        ("teachers.ce-l6.overrides={train: {epoch: 2}}", "teachers.ce-l6.overrides"),
        # A short-form student is its model: the key is under students.<name>.model.
        (
            "students.l1.num_layer=1",
            "students.l1.model.num_layer: unknown key; allowed keys here: attn_implementation, autocast, config_overrides",
        ),
    ],
)
def test_unknown_names_fail_at_load_listing_known_names(tmp_path, override, expected):
    with pytest.raises(ConfigError) as err:
        load_study([write(tmp_path, STUDY)], [override])
    assert expected in str(err.value)


def test_distillation_without_teacher_fails(tmp_path):
    study = {k: v for k, v in STUDY.items() if k != "teachers"}
    with pytest.raises(ConfigError, match="need a teacher"):
        load_study([write(tmp_path, study)])


@pytest.mark.parametrize("name", ["quickstart.yaml", "paper-miniature.yaml"])
def test_shipped_studies_load_and_plan(name):
    cfg = load_study([EXPERIMENTS / name])
    plans = plan_study(cfg)
    assert plans and {p.strategy for p in plans} >= {"contrastive", "distillation"}


def test_student_long_form_overrides_reach_its_trials_only(tmp_path):
    study = {
        **STUDY,
        "base": {**STUDY["base"], "scaling": {"num_workers": 2, "use_gpu": True, "gpus_per_worker": 1}},
        "students": {
            "l1": {"num_layers": 1},
            "big": {
                "model": {"num_layers": 6},
                "overrides": {
                    "train": {"learning_rate": 1e-4, "micro_batch_groups": 1, "grad_accum": 4},
                    "scaling": {"num_workers": 8, "gpus_per_worker": 0.5},
                    "deepspeed": {"zero_stage": 3},
                },
            },
        },
    }
    cfg = load_study([write(tmp_path, study)])
    assert cfg.students["big"].model.num_layers == 6 and cfg.students["big"].model.max_length == 128
    assert StudyConfig.model_validate(cfg.to_dict()) == cfg
    plans = {p.name: p for p in plan_study(cfg)}
    big, small = plans["distillation+big+ce-l6+s1"].run, plans["distillation+l1+ce-l6+s1"].run
    assert (big.train.learning_rate, big.train.grad_accum, big.deepspeed.zero_stage) == (1e-4, 4, 3)
    assert big.loss.name == "distillation" and big.train.seed == 1 and big.train.teacher_scores
    assert (small.train.learning_rate, small.deepspeed.zero_stage, small.scaling.num_workers) == (3e-5, 2, 2)
    assert plans["contrastive+big+s0"].train_resources == {"CPU": 8, "GPU": 4}
    assert plans["contrastive+l1+s0"].train_resources == {"CPU": 2, "GPU": 2}
    assert "ZeRO-3, micro 1 x accum 4" in plans["contrastive+big+s0"].describe()


@pytest.mark.parametrize(
    ("student", "expected"),
    [
        ({"model": {}, "overrides": {"train": {"epoch": 2}}}, "students.big.overrides"),
        ({"model": {}, "overrides": {"loss": {"name": "mix"}}}, "['loss'] are set by the study"),
        ({"overrides": {"train": {"seed": 3}}}, "['train.seed'] are set by the study"),
        ({"num_layers": 2, "overrides": {}}, "long form takes only `model` and `overrides`"),
        ({"overrides": {"deepspeed": {"zero_stage": 0, "offload_optimizer": True}}}, "offload_optimizer"),
    ],
)
def test_bad_student_overrides_fail_at_load(tmp_path, student, expected):
    with pytest.raises(ConfigError) as err:
        load_study([write(tmp_path, {**STUDY, "students": {"big": student}})])
    assert expected in str(err.value)


def test_files_are_read_relative_to_the_study_file(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "base.yaml").write_text("name: ignored-by-trials\ntrain: {epochs: 3}\n")
    (tmp_path / "runs" / "big.yaml").write_text(
        "name: dropped\nmodel: {num_layers: 6}\ndeepspeed: {zero_stage: 3}\n"
    )
    study = {
        **STUDY,
        "base": {"files": ["runs/base.yaml"], "model": {"max_length": 96}},
        "students": {"big": {"files": "runs/big.yaml", "model": {"max_length": 64}}},
    }
    cfg = load_study([write(tmp_path, study)])
    assert cfg.base.train.epochs == 3 and cfg.students["big"].model.num_layers == 6
    assert cfg.students["big"].model.max_length == 64
    assert cfg.student_run("big").deepspeed.zero_stage == 3 and cfg.student_run("big").train.epochs == 3
    with pytest.raises(ConfigError, match="missing.yaml does not exist"):
        load_study([write(tmp_path, {**study, "students": {"x": {"files": "runs/missing.yaml"}}})])


def test_every_student_is_a_student_spec_and_a_student_overrides_section_still_loads(tmp_path):
    study = {**STUDY, "student_overrides": {"l2": {"train": {"learning_rate": 1e-4}}}}
    cfg = load_study([write(tmp_path, study)])
    assert cfg.students["l1"] == StudentSpec(model=cfg.students["l1"].model, overrides={})
    assert cfg.students["l2"].overrides == {"train": {"learning_rate": 1e-4}}
    assert cfg.student_run("l2").train.learning_rate == 1e-4
    with pytest.raises(
        ConfigError, match=r"student_overrides: unknown students \['l9'\]; known students: l1, l2"
    ):
        load_study([write(tmp_path, {**STUDY, "student_overrides": {"l9": {}}})])


def test_a_teacher_scaling_override_reaches_the_teacher_and_its_fold_runs_only(tmp_path):
    # A study-trained teacher trains alone, before the grid: its overrides may give its Train
    # worker every core (the train loop sizes torch's thread pool from cpus_per_worker), while
    # the trials keep base's scaling.
    study = {
        **STUDY,
        "teachers": {
            "ce-l6": {
                "kind": "cross_encoder",
                "model": {"num_layers": 6},
                "cross_fit": 2,
                "overrides": {"scaling": {"cpus_per_worker": 2}},
            }
        },
    }
    cfg = load_study([write(tmp_path, study)])
    assert cfg.teacher_run("ce-l6").scaling.cpus_per_worker == 2
    assert [cfg.teacher_run("ce-l6", fold=i).scaling.cpus_per_worker for i in (0, 1)] == [2, 2]
    assert {p.run.scaling.cpus_per_worker for p in plan_study(cfg)} == {1}


def test_paper_miniature_asks_both_questions_of_the_student_that_learns():
    # The 6-layer student is distilled from both teachers (the first question at the size that
    # learns from ~100 queries; the same-capacity control), and the fold teachers train on both cores.
    cfg = load_study([EXPERIMENTS / "paper-miniature.yaml"])
    names = {p.name for p in plan_study(cfg)}
    assert {
        "distillation+minilm-l6+bi-minilm+s0",
        "distillation+minilm-l6+ce-l6+s0",
        "contrastive+minilm-l6+s0",
    } <= names
    assert len({cfg.students[s].model.num_layers for s in cfg.students}) >= 3
    assert cfg.teacher_run("ce-l6", fold=0).scaling.cpus_per_worker == 2
