"""A run folder's one finished record (``run.json``): written by training, extended by the
trial, emptied of the trial's part when it is evaluated again, and read from the two files
that held it before (``train_result.json``, ``trial.json``)."""

from __future__ import annotations

import json

import pytest

from rerank_ray.study.records import Cost, TrialSummary
from rerank_ray.study.trial import read_summary
from rerank_ray.train.record import RECORD, extend_record, forget, read_record, unfinish, write_train_record

IDENTITY = {"config": "c", "groups": "g", "teacher_scores": None, "base_weights": "w", "recipe": "r"}


def summary(tmp_path) -> TrialSummary:
    return TrialSummary(
        "t",
        {"dl19/nDCG_10": 0.5},
        {"dl19": 0.5},
        Cost(wall_s=3.0),
        tmp_path / "model",
        tmp_path / "eval",
        {},
        None,
    )


def test_training_writes_the_record_and_the_trial_extends_it(tmp_path):
    write_train_record(tmp_path, IDENTITY, {"loss": 0.25}, 12.5)
    assert read_record(tmp_path) == {
        "identity": IDENTITY,
        "train": {"metrics": {"loss": 0.25}, "wall_s": 12.5},
    }
    assert read_summary(tmp_path) is None  # trained, not yet evaluated

    extend_record(tmp_path, {**summary(tmp_path).to_json(), "identity": IDENTITY})
    record = json.loads((tmp_path / RECORD).read_text())
    assert record["train"] == {"metrics": {"loss": 0.25}, "wall_s": 12.5} and record["identity"] == IDENTITY
    assert record["scores"] == {"dl19": 0.5} and record["cost"] == {"wall_s": 3.0}
    assert read_summary(tmp_path).scores == {"dl19": 0.5}
    assert sorted(p.name for p in tmp_path.iterdir()) == [RECORD]  # one record, nothing else


def test_a_trial_evaluated_again_is_not_finished_until_it_is_extended(tmp_path):
    write_train_record(tmp_path, IDENTITY, {}, 1.0)
    extend_record(tmp_path, summary(tmp_path).to_json())
    unfinish(tmp_path)
    assert read_record(tmp_path) == {"identity": IDENTITY, "train": {"metrics": {}, "wall_s": 1.0}}
    assert read_summary(tmp_path) is None
    forget(tmp_path)  # a new model replaces the old one
    assert read_record(tmp_path) is None and not (tmp_path / RECORD).exists()


def test_a_trial_cannot_extend_a_run_that_was_never_trained(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no training result to extend"):
        extend_record(tmp_path, summary(tmp_path).to_json())


def test_the_two_files_of_older_runs_read_as_one_record_and_are_replaced_by_it(tmp_path):
    (tmp_path / "train_result.json").write_text(
        json.dumps({"identity": IDENTITY, "metrics": {"loss": 1.0}, "wall_s": 2.0})
    )
    (tmp_path / "trial.json").write_text(json.dumps({**summary(tmp_path).to_json(), "identity": IDENTITY}))
    record = read_record(tmp_path)
    assert record["train"] == {"metrics": {"loss": 1.0}, "wall_s": 2.0} and record["scores"] == {"dl19": 0.5}
    assert read_summary(tmp_path).identity is not None  # reusable, as before

    unfinish(tmp_path)  # the first write of run.json removes the legacy files
    assert sorted(p.name for p in tmp_path.iterdir()) == [RECORD]
    assert read_record(tmp_path) == {"identity": IDENTITY, "train": {"metrics": {"loss": 1.0}, "wall_s": 2.0}}


def test_an_older_trial_record_without_a_training_record_is_dropped_when_evaluated_again(tmp_path):
    (tmp_path / "trial.json").write_text(json.dumps(summary(tmp_path).to_json()))
    unfinish(tmp_path)
    assert read_record(tmp_path) is None and list(tmp_path.iterdir()) == []
