"""No model selection on test suites: data.validation holds queries out of training, the
`validation` suite evaluates them, and evaluating on the training data is refused at load time."""

from __future__ import annotations

import pandas as pd
import pytest

from rerank_ray.config import ConfigError, DataConfig, RunConfig
from rerank_ray.data.datasets import open_collection
from rerank_ray.data.groups import build_groups
from rerank_ray.evaluation.evaluate import evaluate_scorer
from rerank_ray.study.config import load_study

TINY_TRAIN = {"train": ["fixtures/tiny-scifact"], "train_split": "train", "first_stage": "bm25-top10"}
TINY_GROUPS = {"depth": 10, "group_size": 4, "groups_per_query": 2, "positive_min_label": 1}
STUDY = ["students={a: {num_layers: 1}}", "strategies=[contrastive]"]


def test_validation_split_is_seeded_exact_and_per_dataset():
    ids = [f"q{i}" for i in range(20)]
    data = DataConfig(validation=0.25, validation_seed=3)
    held = data.validation_ids("trec-dl-2020", ids)
    assert len(held) == 5 and held <= set(ids)
    assert held == data.validation_ids("trec-dl-2020", list(reversed(ids)))
    assert held != DataConfig(validation=0.25, validation_seed=4).validation_ids("trec-dl-2020", ids)
    assert DataConfig(validation=("q1", "zz")).validation_ids("x", ids) == {"q1"}
    assert DataConfig().validation_ids("x", ids) == set()


@pytest.mark.parametrize("value", ["1.5", "0.0", "[]"])
def test_bad_validation_values_fail_at_load(value):
    with pytest.raises(ConfigError, match="data.validation"):
        load_study(overrides=[*STUDY, f"base.data.validation={value}"])


def test_held_out_queries_give_no_training_group(tmp_path, data_root):
    cfg = RunConfig.model_validate(
        {"data": {**TINY_TRAIN, "root": str(data_root), "validation": 0.25}, "groups": TINY_GROUPS}
    )
    groups = build_groups(cfg, tmp_path)
    held = {q for ids in groups.stats.validation_ids.values() for q in ids}
    assert len(held) == 2 and groups.stats.queries_held_out == 2
    trained = set(pd.read_parquet(groups.path)["query_id"])
    assert trained and not trained & held


def test_validation_suite_evaluates_only_the_held_out_queries(tmp_path, data_root):
    data = DataConfig.model_validate({**TINY_TRAIN, "root": str(data_root), "validation": 0.25})
    result = evaluate_scorer(None, ["validation"], out_dir=tmp_path, root=data_root, data=data)
    per_query = pd.read_csv(tmp_path / "validation.per_query.tsv", sep="\t", dtype={"query_id": str})
    queries = open_collection(
        "fixtures/tiny-scifact", root=data_root, split="train", first_stage="bm25-top10"
    ).queries
    held = data.validation_ids("fixtures/tiny-scifact", list(queries))
    assert set(per_query["query_id"]) == held and len(held) == 2
    assert 0.0 <= result.suites["validation"]["nDCG@10"] <= 1.0
    with pytest.raises(ValueError, match="set data.validation"):
        evaluate_scorer(None, ["validation"], out_dir=tmp_path / "x", root=data_root, data=DataConfig())


def test_evaluating_on_the_training_queries_is_refused_with_the_reason():
    with pytest.raises(ConfigError) as err:
        load_study(overrides=[*STUDY, "eval.in_domain=[dl19, dl21]"])  # default training data: dl20 + dl21
    message = str(err.value)
    assert "suite 'dl21' (trec-dl-2021, split test) is training data" in message and "'dl19'" not in message
    assert "data.validation" in message
    with pytest.raises(ConfigError, match="suite 'dl20'"):
        load_study(overrides=[*STUDY, "eval.in_domain=[dl20]", "base.data.validation=0.2"])
    # Another split of the same dataset, or other training data, is fine.
    load_study(overrides=[*STUDY, "eval.in_domain=[dl20]", "base.data.train=[trec-dl-2019]"])


def test_the_validation_suite_needs_held_out_queries():
    with pytest.raises(ConfigError, match="validation, which is unset"):
        load_study(overrides=[*STUDY, "eval.in_domain=[dl19, validation]"])
    cfg = load_study(overrides=[*STUDY, "eval.in_domain=[validation, dl19]", "base.data.validation=0.2"])
    assert cfg.eval.suites == ("validation", "dl19")


def test_a_teacher_trained_on_other_data_is_checked_too():
    teacher = "teachers={t: {kind: cross_encoder, model: {num_layers: 1}, overrides: {data: {train: [trec-dl-2019]}}}}"
    with pytest.raises(ConfigError, match=r"teachers\.t\.overrides\.data"):
        load_study(overrides=[*STUDY, teacher, "base.data.train=[scifact]"])


def test_a_run_with_the_validation_suite_needs_held_out_queries():
    with pytest.raises(ConfigError, match="data.validation, which is unset"):
        RunConfig.from_dict({"eval": {"suites": ["validation"]}})
    assert (
        RunConfig.from_dict({"eval": {"suites": ["validation"]}, "data": {"validation": 0.1}}).data.validation
        == 0.1
    )
