"""The paper's grid (experiments/paper/): every student and teacher file stacks on run.yaml
and validates; resources keep the same global batch; the 7B runs shard with ZeRO-3; study.yaml
plans the whole grid from those same files."""

from __future__ import annotations

from pathlib import Path

import pytest

from rerank_ray.config import PROJECT_ROOT, load_config
from rerank_ray.study.config import load_study
from rerank_ray.study.plan import plan_study

PAPER = PROJECT_ROOT / "experiments" / "paper"
STUDENTS = sorted((PAPER / "students").glob("*.yaml"))
TEACHERS = sorted((PAPER / "teachers").glob("*.yaml"))


def test_the_grid_has_every_paper_student():
    names = {p.stem for p in STUDENTS}
    assert {"qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-3b", "qwen2.5-7b"} <= names
    assert any(n.startswith("mamba-") for n in names)


@pytest.mark.parametrize("path", STUDENTS, ids=lambda p: p.stem)
def test_student_files_validate_with_the_same_global_batch(path: Path):
    cfg = load_config([PAPER / "run.yaml", path])
    assert cfg.name == f"paper-{path.stem}"
    assert cfg.model.family == ("recurrent" if path.stem.startswith("mamba") else "decoder")
    assert cfg.model.max_length == 512 and cfg.groups.group_size == 16
    assert cfg.scaling.use_gpu and cfg.deepspeed.precision == "bf16"
    assert cfg.scaling.num_workers * cfg.train.micro_batch_groups * cfg.train.grad_accum == 32
    if cfg.model.source.endswith(("-3B", "-7B")):
        assert cfg.deepspeed.zero_stage == 3


@pytest.mark.parametrize("path", TEACHERS, ids=lambda p: p.stem)
def test_teacher_files_stack_on_the_7b_student(path: Path):
    cfg = load_config([PAPER / "run.yaml", PAPER / "students" / "qwen2.5-7b.yaml", path])
    assert cfg.loss.name == "contrastive" and cfg.model.source == "Qwen/Qwen2.5-7B"


STUDY = PAPER / "study.yaml"


def test_paper_study_dry_run_plans_the_grid_with_per_student_settings(tmp_path, capsys, monkeypatch):
    """`rerank-ray study experiments/paper/study.yaml --dry-run`: every trial, nothing started."""
    from rerank_ray import cli
    from rerank_ray.study import run as study_module

    monkeypatch.setattr(study_module, "run_study", lambda *a, **k: pytest.fail("--dry-run ran the study"))
    assert cli.main(["--log-dir", str(tmp_path), "study", str(STUDY), "--dry-run"]) == 0
    out = capsys.readouterr().out
    # 9 students x (contrastive + distillation from the one 7B teacher) x 3 seeds.
    assert "planned study paper: 54 trial(s)" in out
    assert "distillation+qwen2.5-7b+qwen2.5-7b+s0" in out  # the same-capacity control

    cfg = load_study([STUDY])
    plans = plan_study(cfg)
    assert len(plans) == 54 and {p.student for p in plans} == {p.stem for p in STUDENTS}
    by_student = {p.student: p for p in plans if p.seed == 0 and p.strategy == "distillation"}
    big, small = by_student["qwen2.5-7b"], by_student["qwen2.5-0.5b"]
    assert big.run.deepspeed.zero_stage == 3 and big.run.model.lora is not None
    assert big.run.train.learning_rate == 1e-4 and (
        big.run.train.micro_batch_groups,
        big.run.train.grad_accum,
    ) == (1, 4)
    assert small.run.deepspeed.zero_stage == 2 and small.run.model.lora is None
    assert small.run.train.micro_batch_groups == 4
    for plan in by_student.values():
        assert plan.train_resources == {"CPU": 64, "GPU": 8} and plan.resources == {"CPU": 8, "GPU": 1}
        assert plan.run.loss.name == "distillation" and plan.run.deepspeed.precision == "bf16"
    assert "ZeRO-3, micro 1 x accum 4 groups, lr 0.0001, LoRA r=32" in big.describe()


@pytest.mark.parametrize("path", STUDENTS, ids=lambda p: p.stem)
def test_paper_study_trains_what_the_student_files_say(path: Path):
    """The study reads the student files (`files:`): a trial's run is the stacked file's run."""
    cfg = load_study([STUDY])
    alone = load_config([PAPER / "run.yaml", path])
    trial = next(p.run for p in plan_study(cfg) if p.student == path.stem and p.strategy == "contrastive")
    for section in ("model", "train", "scaling", "deepspeed", "data", "groups"):
        mine, theirs = getattr(trial, section).model_dump(), getattr(alone, section).model_dump()
        if section == "train":  # the grid's axes
            for key in ("seed", "teacher_scores"):
                mine.pop(key), theirs.pop(key)
        assert mine == theirs, section


def test_paper_study_teacher_is_the_teacher_file():
    cfg = load_study([STUDY])
    teacher = cfg.teacher_run("qwen2.5-7b")
    alone = load_config([PAPER / "run.yaml", PAPER / "students" / "qwen2.5-7b.yaml", *TEACHERS])
    assert teacher.loss.name == "contrastive"
    for section in ("model", "train", "scaling", "deepspeed"):
        assert getattr(teacher, section) == getattr(alone, section), section
    assert set(cfg.eval.in_domain) == {"msmarco-dev-small", "dl19", "dl20"}
    assert len(cfg.eval.out_of_domain) == 8
