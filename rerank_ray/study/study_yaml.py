"""Study YAML normalisation: from the dicts a study file holds to the dict StudyConfig validates.

The study file's format (short and long student forms, strategy lists, ``files`` keys) is
described in rerank_ray.study.config's module docstring; the fields and their checks live there.
This module only rewrites raw dicts:

- :func:`read_files` replaces the ``files`` keys of one study file by the RunConfig files they
  name, relative to the study file (``load_study``);
- :func:`merge_base` merges students over ``base.model``, strategies over ``base.loss`` and
  study-trained teachers' models over ``base.model``, and writes every student in the long
  form ``{model, overrides}`` that ``StudentSpec`` validates (``StudyConfig``'s before-validator).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rerank_ray.config import ConfigError, LossName, RunConfig, Section
from rerank_ray.config_loading import deep_merge, read_yaml

LOSS_NAMES: tuple[str, ...] = LossName.__args__  # type: ignore[attr-defined]

STUDENT_LONG_FORM = {"model", "overrides"}


def merge_base(data: Any) -> Any:
    """Students over base.model, strategies over base.loss, study-trained teachers' models over
    base.model (see rerank_ray.study.config's module docstring): StudyConfig's before-validator."""
    if not isinstance(data, dict):
        return data
    data = dict(data)
    base = data.get("base") or {}
    base = base.model_dump(mode="json") if isinstance(base, RunConfig) else base
    base_model = base.get("model") or {}
    base_loss = {k: v for k, v in (base.get("loss") or {}).items() if k != "name"}
    students = data.get("students")
    if isinstance(students, dict):
        data["students"] = _students(students, data.pop("student_overrides", None) or {}, base_model)
    strategies = data.get("strategies")
    if isinstance(strategies, (list, tuple)):
        strategies = {name: {} for name in strategies}
    if isinstance(strategies, dict):
        unknown = [k for k in strategies if k not in LOSS_NAMES]
        if unknown:
            raise ValueError(f"unknown strategy {unknown}; known strategies: {', '.join(LOSS_NAMES)}")
        data["strategies"] = {
            k: {**deep_merge(base_loss, _plain(v)), "name": k} for k, v in strategies.items()
        }
    teachers = data.get("teachers")
    if isinstance(teachers, dict):
        data["teachers"] = {
            k: {**v, "model": deep_merge(base_model, _plain(v["model"]))}
            # A `source` teacher's model is its own (ModelConfig defaults), not over base.model.
            if isinstance(v, dict)
            and v.get("kind") == "cross_encoder"
            and v.get("model") is not None
            and v.get("source") is None
            else v
            for k, v in teachers.items()
        }
    return data


def _students(
    students: dict[str, Any], overrides: dict[str, Any], base_model: dict[str, Any]
) -> dict[str, Any]:
    """Each student in the long form ``{model, overrides}``, its model merged over `base_model`.

    A short-form student (model fields alone) becomes ``{model: <it>, overrides: {}}``;
    `overrides` (a ``student_overrides`` section: student -> RunConfig fields) is merged under
    each named student's own overrides."""
    unknown = sorted(set(overrides) - set(students))
    if unknown:
        raise ValueError(
            f"student_overrides: unknown students {unknown}; known students: {', '.join(students)}"
        )
    merged: dict[str, Any] = {}
    for k, v in students.items():
        v = _plain(v)
        if isinstance(v, dict) and STUDENT_LONG_FORM & set(v):
            extra = sorted(set(v) - STUDENT_LONG_FORM)
            if extra:
                raise ValueError(
                    f"students.{k}: the long form takes only `model` and `overrides`, found "
                    f"{extra}; put model fields under `model` (or use the short form, model "
                    "fields alone)"
                )
            model, own = _plain(v.get("model")), _plain(v.get("overrides"))
        else:
            model, own = v, {}
        merged[k] = {
            "model": deep_merge(base_model, model) if isinstance(model, dict) else model,
            "overrides": deep_merge(overrides.get(k) or {}, own),
        }
    return merged


def _plain(value: Any) -> Any:
    return value.model_dump(mode="json") if isinstance(value, Section) else (value or {})


def _stack(files: Any, directory: Path, where: str) -> dict[str, Any]:
    names = [files] if isinstance(files, str) else files
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"{where}.files: expected a path or a list of paths, got {files!r}")
    out: dict[str, Any] = {}
    for name in names:
        path = Path(name) if Path(name).is_absolute() else directory / name
        if not path.is_file():
            raise ConfigError(f"{where}.files: {path} does not exist (paths are relative to {directory})")
        out = deep_merge(out, read_yaml(path))
    return out


def read_files(data: dict[str, Any], directory: Path) -> dict[str, Any]:
    """Replace the ``files`` keys of `data` (one study file) by the RunConfig files they name."""
    data = dict(data)
    base = data.get("base")
    if isinstance(base, dict) and "files" in base:
        rest = {k: v for k, v in base.items() if k != "files"}
        data["base"] = deep_merge(_stack(base["files"], directory, "base"), rest)
    for section in ("students", "teachers"):
        entries = data.get(section)
        if not isinstance(entries, dict):
            continue
        data[section] = dict(entries)
        for name, entry in entries.items():
            if not (isinstance(entry, dict) and "files" in entry):
                continue
            run = _stack(entry["files"], directory, f"{section}.{name}")
            run.pop("name", None)
            model = run.pop("model", None) or {}
            rest = {k: v for k, v in entry.items() if k != "files"}
            data[section][name] = {
                **rest,
                "model": deep_merge(model, rest.get("model") or {}),
                "overrides": deep_merge(run, rest.get("overrides") or {}),
            }
    return data
