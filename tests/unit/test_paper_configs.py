"""The paper's grid (experiments/paper/): every student and teacher file stacks on run.yaml
and validates; resources keep the same global batch; the 7B runs shard with ZeRO-3."""

from __future__ import annotations

from pathlib import Path

import pytest

from rerank_ray.config import PROJECT_ROOT, load_config

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
