"""A teacher the study does not train (a zero-shot bi-encoder) is evaluated once: a resumed study
reuses its evaluation while the teacher's files, the evaluation config and the data are the same,
and evaluates it again when any of them changes (``study/reuse.py``). Before this, every rerun of
a study scored every suite with the teacher again (3 minutes for MPNet on SciFact and dl19)."""

from __future__ import annotations

import shutil

import pytest

from rerank_ray.config import PROJECT_ROOT
from rerank_ray.study.config import load_study
from tests.conftest import tiny_scifact_study


def study(tmp_path, *extra: str):
    return load_study(
        overrides=[
            *tiny_scifact_study(tmp_path, "reuse"),
            "teachers={bi: {kind: bi_encoder, max_length: 32}}",
            "students={s: {num_layers: 1}}",
            "strategies=[distillation]",
            "eval.in_domain=[tiny-scifact]",
            *extra,
        ]
    )


@pytest.fixture
def copied(tmp_path):
    """A copy of the tiny SciFact folder, to change a judgment in, evaluated as the suite `copy`
    (an absolute folder: its own ir_datasets id)."""
    folder = shutil.copytree(PROJECT_ROOT / "data" / "fixtures" / "tiny-scifact", tmp_path / "tiny-scifact")
    suite = f"eval.suites_defined={{copy: {{dataset: {folder}, first_stage: bm25-top10, depth: 10}}}}"
    return folder, (suite, "eval.in_domain=[copy]")


def _evaluate(cfg):
    """Teacher `bi` as the study runs it: evaluated and scoring the groups, in its child run."""
    import mlflow

    from rerank_ray.study.run import _groups
    from rerank_ray.study.tracking import study_run
    from rerank_ray.teacher.stage import teacher

    mlflow.set_tracking_uri(cfg.base.mlflow.tracking_uri)
    found = mlflow.get_experiment_by_name("reuse")
    experiment = found.experiment_id if found else mlflow.create_experiment("reuse")
    with study_run(experiment, cfg.name, cfg.study_dir, cfg.base.mlflow.tracking_uri) as parent:
        return teacher(cfg, "bi", _groups(cfg), experiment, parent.run_id)[0]


def test_an_unchanged_teacher_evaluation_is_reused_and_changed_data_evaluates_again(
    tmp_path, copied, monkeypatch
):
    import rerank_ray.teacher.stage as stage

    folder, suite = copied
    first = _evaluate(study(tmp_path, *suite))
    assert set(first.scores) == {"copy"}
    calls = []
    real = stage.evaluate_suites
    monkeypatch.setattr(stage, "evaluate_suites", lambda *a, **k: calls.append(1) or real(*a, **k))

    # The same study again: nothing is scored, the numbers are the stored ones.
    assert _evaluate(study(tmp_path, *suite)) == first and calls == []

    # A judgment removed from the suite's qrels file: evaluated again.
    qrels = folder / "qrels" / "test.tsv"
    qrels.write_text("\n".join(qrels.read_text().splitlines()[:-1]) + "\n")
    _evaluate(study(tmp_path, *suite))
    assert calls == [1]


def test_the_key_changes_with_each_input_it_names(tmp_path, copied):
    from rerank_ray.study.reuse import evaluation_key

    folder, suite = copied

    def key(*extra: str, model=None) -> str:
        cfg = study(tmp_path, *suite, *extra)
        return evaluation_key(model or {"kind": "bi_encoder", "content": "a"}, cfg.eval, cfg.base.data)

    same = key()
    assert key() == same
    changed = {
        "the model's content": key(model={"kind": "bi_encoder", "content": "b"}),
        "a depth": key("eval.depth={copy: 5}"),
        "the measure": key("eval.measure=RR@10"),
        "the data config": key("base.data.validation=0.5"),
    }
    (folder / "queries.jsonl").write_text((folder / "queries.jsonl").read_text() + "\n")
    changed["a data file's bytes"] = key()
    run = tmp_path / "other.run"
    run.write_text((folder / "bm25-top10.test.run").read_text())
    changed["a run-file override"] = key(f"eval.run_files={{copy: {run}}}")
    run.write_text(run.read_text().replace(" 1 ", " 9 ", 1))
    changed["that run file's bytes"] = key(f"eval.run_files={{copy: {run}}}")
    keys = [same, *changed.values()]
    assert len(set(keys)) == len(keys), changed


def test_an_interrupted_evaluation_leaves_no_key_so_it_is_not_reused(tmp_path, monkeypatch):
    import rerank_ray.teacher.stage as stage
    from rerank_ray.study import reuse

    cfg = study(tmp_path)
    model = cfg.teachers["bi"].scorer(cfg.study_dir / "teachers" / "bi")
    out_dir = cfg.study_dir / "teachers" / "bi" / "eval"
    # A finished evaluation of another config: its key is there until a new evaluation starts.
    reuse.remember(out_dir, "the key of an earlier evaluation")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(stage, "evaluate_suites", interrupted)
    with pytest.raises(KeyboardInterrupt):
        stage._evaluate_teacher(cfg, "bi", model)
    assert not (out_dir / reuse.KEY_FILE).exists()
