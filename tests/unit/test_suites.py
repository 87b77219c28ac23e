"""User-defined suites: checked at load time against built-in + defined names, used by name."""

from __future__ import annotations

import pytest

from rerank_ray.config import ConfigError, load_config
from rerank_ray.evaluation.suites import SUITES, get_suite, known_suites, with_relevance
from rerank_ray.study.config import load_study

MINE = "{mycorpus: {dataset: /data/mine, split: dev, first_stage: bm25, depth: 30, relevance: 2}}"


def test_relevance_applies_to_binary_measures_only():
    assert with_relevance(["nDCG@10", "RR@10", "R@100", "P@5"], 2) == (
        "nDCG@10",
        "RR(rel=2)@10",
        "R(rel=2)@100",
        "P(rel=2)@5",
    )
    assert with_relevance(["RR@10"], 1) == ("RR@10",)
    # An explicit threshold in the measure name wins.
    assert with_relevance(["RR(rel=3)@10"], 2) == ("RR(rel=3)@10",)


def test_run_config_defines_and_uses_a_suite():
    cfg = load_config(overrides=[f"eval.suites_defined={MINE}", "eval.suites=[mycorpus, dl19]"])
    suite = cfg.eval.suites_defined["mycorpus"].suite()
    assert (suite.dataset, suite.split, suite.first_stage, suite.depth) == ("/data/mine", "dev", "bm25", 30)
    assert suite.measures == ("nDCG@10", "RR(rel=2)@10", "R(rel=2)@100")
    assert get_suite("mycorpus", {"mycorpus": suite}) is suite
    # The round trip to a Ray worker keeps the definition.
    assert type(cfg).from_dict(cfg.to_dict()) == cfg


def test_unknown_suite_lists_every_known_name():
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[f"eval.suites_defined={MINE}", "eval.suites=[mycorpsu]"])
    message = str(err.value)
    assert "['mycorpsu']" in message
    for name in [*SUITES, "mycorpus"]:
        assert name in message


def test_defined_suite_may_not_shadow_a_built_in():
    with pytest.raises(ConfigError, match=r"\['dl19'\] are built-in suite names"):
        load_config(overrides=["eval.suites_defined={dl19: {dataset: x}}", "eval.suites=[dl19]"])


def test_bad_measure_fails_at_load():
    with pytest.raises(ConfigError, match="'nDCG@ten' is not an ir_measures measure"):
        load_config(overrides=["eval.suites_defined={m: {dataset: x, measures: [nDCG@ten]}}"])


def test_study_uses_defined_suites_everywhere():
    base = [
        "students={s: {}}",
        "strategies=[contrastive]",
        f"eval.suites_defined={MINE}",
        "eval.in_domain=[mycorpus]",
        "eval.out_of_domain=[dl19]",
        "eval.depth={mycorpus: 10}",
        "eval.run_files={mycorpus: runs/mine.run}",
    ]
    study = load_study(overrides=base)
    assert study.eval.suites == ("mycorpus", "dl19")
    assert set(known_suites(study.eval.defined())) == {*SUITES, "mycorpus"}
    with pytest.raises(ConfigError, match="unknown evaluation suite"):
        load_study(overrides=[*base, "eval.in_domain=[yourcorpus]"])
    # The report's measure must be computed by the defined suite too (with its relevance).
    assert load_study(overrides=[*base, "eval.measure=RR(rel=2)@10", "eval.out_of_domain=[]"])
    with pytest.raises(ConfigError, match=r"not computed by suites \['mycorpus'\]"):
        load_study(overrides=[*base, "eval.measure=RR@10", "eval.out_of_domain=[]"])
