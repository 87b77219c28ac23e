"""Names are slugs checked at load time; trial names never collide; paths stay under output_dir."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rerank_ray import cli
from rerank_ray.config import ConfigError, RunConfig, check_name, load_config, under
from rerank_ray.study import plan
from rerank_ray.study.config import load_study
from rerank_ray.study.plan import plan_study

STUDY = {
    "name": "s",
    "teachers": {"t-y": {"kind": "bi_encoder"}, "y": {"kind": "bi_encoder"}},
    "students": {"x": {"num_layers": 1}, "x-t": {"num_layers": 2}},
    "strategies": ["distillation"],
    "seeds": [0],
    "eval": {"in_domain": ["dl19"]},
}


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.parametrize("name", ["run", "minilm-l6", "qwen2.5-7b", "a_b", "A1", "0"])
def test_slugs_are_names(name):
    assert check_name(name) == name


@pytest.mark.parametrize(
    "name", ["", ".hidden", "..", "../../../elsewhere", "a/b", "a b", "a+b", "é", "x" * 101]
)
def test_other_strings_are_refused_with_what_is_allowed(name):
    with pytest.raises(ValueError, match="not a valid name: use 1-100 letters, digits"):
        check_name(name)


def test_run_name_is_checked_at_load_time_including_overrides():
    with pytest.raises(ConfigError, match=r"name: .*'../../../elsewhere' is not a valid name"):
        load_config(overrides=["name=../../../elsewhere"])
    with pytest.raises(ConfigError, match="'my run' is not a valid name"):
        load_config(overrides=["name=my run"])


def test_prepare_outside_the_outputs_folder_fails_before_writing(tmp_path, monkeypatch, capsys):
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    code = cli.main(["--log-dir", str(tmp_path / "logs"), "prepare", "name=../../elsewhere"])
    assert code == 1
    assert "is not a valid name" in capsys.readouterr().err
    assert not (tmp_path / "elsewhere").exists() and not (tmp_path / "work" / "outputs").exists()


@pytest.mark.parametrize(
    ("key", "value"),
    [("name", "my study"), ("students", {"a b": {}}), ("teachers", {"../t": {"kind": "bi_encoder"}})],
)
def test_study_student_and_teacher_names_are_checked_at_load_time(tmp_path, key, value):
    with pytest.raises(ConfigError, match="is not a valid name"):
        load_study([write(tmp_path, {**STUDY, key: value})])


def test_trial_names_of_x_and_x_t_against_t_y_and_y_do_not_collide(tmp_path):
    names = [p.name for p in plan_study(load_study([write(tmp_path, STUDY)]))]
    # With '-' both (x, t-y) and (x-t, y) were "distillation-x-t-y-s0": one folder, merged results.
    assert "distillation+x+t-y+s0" in names and "distillation+x-t+y+s0" in names
    assert len(set(names)) == len(names) == 4


def test_two_trials_with_one_name_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(plan, "trial_name", lambda strategy, student, teacher, seed: "-".join(
        [strategy, student, *([teacher] if teacher else []), f"s{seed}"]
    ))  # fmt: skip
    with pytest.raises(
        ConfigError, match=r"would both be named 'distillation-x-t-y-s0' and share one folder"
    ):
        plan_study(load_study([write(tmp_path, STUDY)]))


def test_overlapping_grid_blocks_plan_a_trial_once(tmp_path):
    study = {**STUDY, "grid": [{"students": ["x"]}, {"students": ["x"], "teachers": ["y"]}]}
    names = [p.name for p in plan_study(load_study([write(tmp_path, study)]))]
    assert names == ["distillation+x+t-y+s0", "distillation+x+y+s0"]


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("seeds=[0,1,0]", r"seeds \[0, 1, 0\] repeats \[0\]; list each seed once"),
        ("grid=[{seeds: [2, 2]}]", r"seeds \[2, 2\] repeats \[2\]"),
    ],
)
def test_duplicate_seeds_are_refused(tmp_path, override, expected):
    with pytest.raises(ConfigError, match=expected):
        load_study([write(tmp_path, STUDY)], [override])


def test_output_paths_resolve_under_the_output_dir(tmp_path):
    cfg = RunConfig(name="r", output_dir=tmp_path / "out")
    assert cfg.run_dir == (tmp_path / "out" / "r").resolve()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(ConfigError, match=r"outside the output directory .*; choose another name"):
        under(tmp_path / "out", "link")
    with pytest.raises(ConfigError, match="outside the output directory"):
        _ = RunConfig(name="link", output_dir=tmp_path / "out").run_dir
    study = load_study([write(tmp_path, STUDY)], [f"base.output_dir={tmp_path / 'out'}", "name=link"])
    with pytest.raises(ConfigError, match="outside the output directory"):
        _ = study.study_dir
