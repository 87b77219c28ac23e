"""A ``best_of`` teacher (``teacher/select.py``): chosen on held-out training queries, never on
a test suite; the choice is stored, reused while its inputs are unchanged, logged to MLflow and
shown in the report. Two real bi-encoders on tiny SciFact, no Ray (the jobs are small enough to
run in process)."""

from __future__ import annotations

import json

import pytest

from rerank_ray.config import ConfigError
from rerank_ray.study.config import load_study
from rerank_ray.study.plan import teacher_scores_dir
from tests.conftest import tiny_scifact_study

CANDIDATES = (
    # The same model twice, seeing different lengths of the documents: different rankings.
    "teachers={short: {kind: bi_encoder, max_length: 8}, full: {kind: bi_encoder, max_length: 256},"
    " best: {kind: best_of, candidates: [short, full], depth: 10}}"
)


def study(tmp_path, *extra: str):
    return load_study(
        overrides=[
            *tiny_scifact_study(tmp_path, "select"),
            "base.data.validation=0.5",
            CANDIDATES,
            "students={s: {num_layers: 1}}",
            "strategies=[distillation]",
            "eval.in_domain=[tiny-scifact]",
            *extra,
        ]
    )


@pytest.mark.parametrize(
    "override, expected",
    [
        (
            "teachers.best.suite=tiny-scifact",
            "'tiny-scifact' is a test suite; a teacher is chosen on held-out",
        ),
        (
            "teachers.best.candidates=[short, nope]",
            "'nope' is not a bi_encoder or (not cross-fitted) cross_encoder",
        ),
        (
            "base.data.validation=null",
            "teachers.best.suite: eval: suite 'validation' evaluates the training queries held out by base.data.validation",
        ),
    ],
)
def test_a_best_of_teacher_is_never_chosen_on_a_test_suite_nor_among_unknown_teachers(
    tmp_path, override, expected
):
    with pytest.raises(ConfigError, match="invalid StudyConfig") as err:
        study(tmp_path, override)
    assert expected in str(err.value)


def test_the_best_candidate_on_held_out_queries_gives_its_scores_logged_and_reused(tmp_path, monkeypatch):
    import mlflow

    import rerank_ray.study.trial as trial
    from rerank_ray.study.run import _groups
    from rerank_ray.study.tracking import study_run
    from rerank_ray.teacher.select import SELECTION_FILE
    from rerank_ray.teacher.stage import teacher, teacher_info

    cfg = study(tmp_path)
    mlflow.set_tracking_uri(cfg.base.mlflow.tracking_uri)
    experiment = mlflow.create_experiment("select")
    with study_run(experiment, cfg.name, cfg.study_dir, cfg.base.mlflow.tracking_uri) as parent:
        groups_path = _groups(cfg)
        record, _ = teacher(cfg, "best", groups_path, experiment, parent.run_id)
        info = teacher_info(cfg, "best", groups_path)

    selection = json.loads((cfg.study_dir / "teachers" / "best" / SELECTION_FILE).read_text())
    assert selection["suite"] == "validation" and set(selection["scores"]) == {"short", "full"}
    assert selection["queries"] == 4  # half of tiny SciFact's 8 training queries, held out
    chosen = max(selection["scores"], key=selection["scores"].get)
    assert selection["chosen"] == chosen and selection["scores"]["short"] != selection["scores"]["full"]
    # Its scores are the chosen candidate's, its evaluation the chosen one's.
    best, source = (teacher_scores_dir(cfg, n) / "scores" for n in ("best", chosen))
    assert sorted(p.read_bytes() for p in best.glob("*.parquet")) == sorted(
        p.read_bytes() for p in source.glob("*.parquet")
    )
    assert set(record.scores) == {"tiny-scifact"}
    assert f"`{chosen}`" in info.evaluates and info.selection.startswith(
        f"chosen `{chosen}` among 2 candidates"
    )
    # The candidates' scores are in the teacher's MLflow run (names in MLflow's key alphabet).
    run = mlflow.search_runs([experiment], filter_string="tags.mlflow.runName = 'teacher-best'").iloc[0]
    assert run[f"metrics.selection/{chosen}/validation/nDCG_10"] == pytest.approx(selection["scores"][chosen])
    assert run["params.teacher.chosen"] == chosen

    # An unchanged study reuses the choice: no candidate is evaluated again.
    from rerank_ray.teacher.select import choose

    monkeypatch.setattr(trial, "evaluate_suites", lambda *a, **k: pytest.fail("evaluated again"))
    models = {c: cfg.teachers[c].scorer() for c in ("short", "full")}
    assert choose(cfg, "best", cfg.teachers["best"], models).chosen == chosen
    # A change to what is held out is a different choice: chosen again.
    other = study(tmp_path, "base.data.validation_seed=1")
    with pytest.raises(pytest.fail.Exception, match="evaluated again"):
        choose(other, "best", other.teachers["best"], models)
