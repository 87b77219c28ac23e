"""Every ``Literal`` in the typed config names either a registry's keys or a closed set of choices.

A name that selects a registry entry (a loss, a model family, a suite, a teacher kind) is a
``Literal`` so that a typo fails at load time; this is the one test that keeps each such
``Literal`` equal to its registry, in both directions. A new ``Literal`` that is neither must be
added to ``CHOICES`` below, so that nobody adds a registry-backed name without its check.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Iterator

import pytest
from pydantic import BaseModel

import rerank_ray.config
import rerank_ray.study.config
import rerank_ray.teacher.config
from rerank_ray.losses import LOSSES, TEACHER_LOSSES
from rerank_ray.models import MODELS
from rerank_ray.teacher.config import TeacherModel

CONFIG_MODULES = (rerank_ray.config, rerank_ray.study.config, rerank_ray.teacher.config)

# Literals that select no registry entry: closed choices, documented where the field is.
CHOICES = (
    {"pretrained", "random"},  # ModelConfig.init
    {"head", "yes_logit"},  # ModelConfig.scoring
    {"left", "right"},  # ModelConfig.padding_side
    {"auto", "float32", "bfloat16"},  # ModelConfig.dtype
    {0, 1, 2, 3},  # DeepSpeedConfig.zero_stage
    {"auto", "fp32", "bf16"},  # DeepSpeedConfig.precision
    {"auto", "bf16", "off"},  # ModelConfig.autocast, TeacherModel.autocast, BiEncoderTeacher.autocast
    {"float32", "bfloat16"},  # ScoringConfig.dtype
    {"randomization", "ttest"},  # the report's significance test
    {"dedupe", "error"},  # DataConfig.duplicate_run_entries
    {"scores"},  # ScoresTeacher.kind: precomputed scores (teacher.given), no scorer loads them
    {"best_of"},  # BestOfTeacher.kind: another teacher, chosen (teacher.select), not a scorer
)


def teacher_kinds() -> set[str]:
    """The teacher kinds the scorer loads (rerank_ray.teacher.score dispatches on these)."""
    return set(typing.get_args(TeacherModel.model_fields["kind"].annotation))


def registries() -> dict[str, set]:
    from rerank_ray.evaluation.suites import SUITES

    return {
        "loss": set(LOSSES),
        "model family": set(MODELS),
        "suite": set(SUITES),
        "teacher kind": teacher_kinds(),
    }


def literals(annotation: object) -> Iterator[set]:
    """The value sets of every ``Literal`` inside `annotation` (through tuple, dict, unions...)."""
    if typing.get_origin(annotation) is typing.Literal:
        yield set(typing.get_args(annotation))
        return
    for arg in typing.get_args(annotation):
        yield from literals(arg)


def config_literals() -> list[tuple[str, set]]:
    """(``Class.field``, values) for every Literal in every config class of CONFIG_MODULES."""
    found = []
    for module in CONFIG_MODULES:
        for cls_name, cls in inspect.getmembers(module, inspect.isclass):
            if not issubclass(cls, BaseModel) or cls.__module__ != module.__name__:
                continue
            for field_name, field in cls.model_fields.items():
                found.extend((f"{cls_name}.{field_name}", values) for values in literals(field.annotation))
    return found


def test_the_walk_finds_the_registry_fields():
    where = {name for name, _ in config_literals()}
    assert {"ModelConfig.family", "LossConfig.name", "TeacherModel.kind"} <= where


@pytest.mark.parametrize(
    ("where", "values"), config_literals(), ids=lambda x: x if isinstance(x, str) else ""
)
def test_every_literal_equals_its_registry_or_is_a_closed_choice(where, values):
    if values in CHOICES:
        return
    named = {name: keys for name, keys in registries().items() if values & keys}
    assert named, f"{where}: Literal {sorted(values, key=str)} is no registry's keys; add it to CHOICES"
    ((name, keys),) = named.items()
    if len(values) == 1 and where.endswith(".kind"):
        # A discriminator of a tagged union (the study's teacher specs): one kind each,
        # checked all together below.
        assert values <= keys, f"{where}: {values} is not a {name}; known: {sorted(keys)}"
        return
    assert values == keys, f"{where}: Literal {sorted(values)} != {name} registry {sorted(keys)}"


def test_study_teacher_specs_cover_every_teacher_kind():
    union = typing.get_args(typing.get_args(rerank_ray.study.config.TeacherSpec)[0])
    kinds = set().union(*(typing.get_args(spec.model_fields["kind"].annotation) for spec in union))
    # Every scorer kind, plus precomputed scores (imported rather than scored) and best_of
    # (one of the other teachers, chosen on held-out queries).
    assert kinds == teacher_kinds() | {"scores", "best_of"}


def test_teacher_losses_follow_each_class():
    from rerank_ray.loss_names import LOSS_SPECS, LossName

    # The torch-free registry and the implementations name the same losses.
    assert set(LOSS_SPECS) == set(typing.get_args(LossName)) == set(LOSSES)
    assert TEACHER_LOSSES == {name for name, cls in LOSSES.items() if cls.needs_teacher}
    assert "contrastive" not in TEACHER_LOSSES and "distillation" in TEACHER_LOSSES
    for name, cls in LOSSES.items():
        assert cls.name == name
        assert rerank_ray.config.LossConfig(name=name).needs_teacher is cls.needs_teacher


def test_family_classes_name_their_registry_key():
    for family, cls in MODELS.items():
        assert cls.family == family
