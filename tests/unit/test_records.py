"""The typed records between the trial, the study and the report, and the files they are read from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rerank_ray.study.config import load_study
from rerank_ray.study.plan import plan_study
from rerank_ray.study.records import Cost, EvalRecord, EvalSummary, TrialRecord, TrialSummary
from rerank_ray.study.run import _add_evaluation, _record
from rerank_ray.study.trial import read_summary

# A trial.json as the trial wrote it when the summary was a plain dict (identity left out:
# a record without one is read, and never reused).
LEGACY_TRIAL = {
    "name": "contrastive+l1+s0",
    "metrics": {"tiny-dl19/nDCG_10": 0.5, "tiny-dl19/RR_rel_2_10": 0.75},
    "scores": {"tiny-dl19": 0.5},
    "cost": {"wall_s": 12.5, "train_wall_s": 10.0, "pairs_per_s": None, "cpu_hours": 0.01, "gpu_hours": 0.0},
    "model_dir": "/study/trials/contrastive+l1+s0/model",
    "eval_dir": "/study/trials/contrastive+l1+s0/eval",
    "run_config": {"name": "contrastive+l1+s0"},
    "identity": None,
}


def test_a_trial_json_written_before_the_records_is_read_and_written_back_with_the_same_keys(tmp_path):
    (tmp_path / "trial.json").write_text(json.dumps(LEGACY_TRIAL))
    summary = read_summary(tmp_path)
    assert summary.model_dir == Path(LEGACY_TRIAL["model_dir"]) and summary.eval_dir.name == "eval"
    assert summary.cost == Cost(wall_s=12.5, train_wall_s=10.0, cpu_hours=0.01, gpu_hours=0.0)
    assert summary.identity is None and summary.scores == {"tiny-dl19": 0.5}
    again = summary.to_json()
    assert set(again) == set(LEGACY_TRIAL)
    # An unmeasured cost (None) is left out rather than written as null.
    assert again["cost"] == {k: v for k, v in LEGACY_TRIAL["cost"].items() if v is not None}
    assert TrialSummary.from_json(json.loads(json.dumps(again))) == summary


def test_eval_summary_round_trips_through_eval_json_keys():
    summary = EvalSummary(
        metrics={"a/nDCG_10": 0.25}, scores={"a": 0.25}, measure="nDCG@10", eval_dir=Path("/e")
    )
    data = json.loads(json.dumps(summary.to_json()))
    assert data == {
        "metrics": {"a/nDCG_10": 0.25},
        "scores": {"a": 0.25},
        "measure": "nDCG@10",
        "eval_dir": "/e",
    }
    assert EvalSummary.from_json(data) == summary


def test_cost_adds_scoring_and_sums_folds():
    manifest_cost = {
        "wall_s": 4.0,
        "pairs_scored_now": 100,
        "pairs_per_s": 25.0,
        "cpu_hours": 0.5,
        "gpu_hours": 0.0,
        "actors": 2,
        "where": "in_process",  # a layout key, as "actors" (a study once crashed on it)
    }
    fold = Cost(wall_s=10.0, train_wall_s=8.0, cpu_hours=1.0, gpu_hours=0.0).with_scoring(manifest_cost)
    assert (
        fold.scoring_wall_s == 4.0
        and fold.scoring_pairs_per_s == 25.0
        and fold.scoring_pairs_scored_now == 100
    )
    assert "scoring_actors" not in fold.to_json() and "scoring_where" not in fold.to_json()
    assert fold.pairs_per_s is None
    total = Cost() + fold + fold
    assert total.wall_s == 20.0 and total.scoring_cpu_hours == 1.0 and total.pairs_per_s is None
    assert total.forecast_wall_s is None


def test_an_unknown_cost_key_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown cost keys \\['wal_s'\\]; known: wall_s"):
        Cost.from_json({"wal_s": 1.0})


def test_a_trial_record_reads_its_evaluation_cost_and_final_metrics_from_trial_json(tmp_path):
    cfg = load_study(
        overrides=[
            "name=rec",
            f"base.output_dir={tmp_path}",
            "students={a: {}}",
            "strategies=[contrastive]",
            "seeds=[0, 1]",
            "eval.in_domain=[dl19]",
            "eval.out_of_domain=[scifact]",
        ]
    )
    finished, lost = plan_study(cfg)
    eval_dir = Path(finished.run.output_dir) / finished.name / "eval"
    eval_dir.mkdir(parents=True)
    for suite in ("dl19", "scifact"):
        lines = ["query_id\tmeasure\tvalue", "q1\tnDCG@10\t0.25", "q1\tRR@10\t1.0", "q2\tnDCG@10\t0.75"]
        (eval_dir / f"{suite}.per_query.tsv").write_text("\n".join(lines) + "\n")
    metrics = {"dl19/nDCG_10": 0.5, "scifact/nDCG_10": 0.5, "scifact/RR_10": float("nan")}
    summary = TrialSummary(
        finished.name, metrics, {"dl19": 0.5, "scifact": 0.5}, Cost(wall_s=2.0), eval_dir.parent / "model",
        eval_dir, {}, None,
    )  # fmt: skip
    (eval_dir.parent / "trial.json").write_text(json.dumps(summary.to_json()))

    records = [_record(finished, "ok", reused=True), _record(lost, "ok")]
    for plan, record in zip((finished, lost), records, strict=True):
        _add_evaluation(cfg, plan, record)

    per_query = {"q1": 0.25, "q2": 0.75}  # the study's measure only
    assert records[0] == TrialRecord(
        finished.name, "contrastive", "a", None, 0, "ok",
        eval=EvalRecord({"dl19": 0.5, "scifact": 0.5}, {"dl19": per_query, "scifact": per_query}),
        cost=Cost(wall_s=2.0), reused=True,
        # What the trial logged at the end: finite metrics and its cost (NaN is not loggable).
        metrics={"dl19/nDCG_10": 0.5, "scifact/nDCG_10": 0.5, "cost/wall_s": 2.0},
    )  # fmt: skip
    # Reported ok, but it left no evaluation in its record: an error the report lists.
    missing = Path(lost.run.output_dir) / lost.name / "run.json"
    assert (records[1].status, records[1].error) == ("error", f"finished without an evaluation in {missing}")
    assert records[1].eval is None and records[1].metrics == {} and records[1].cost == Cost()
