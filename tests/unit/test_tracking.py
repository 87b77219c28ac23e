"""Tracking URIs are logged, printed and saved with their credentials redacted."""

from __future__ import annotations

import pytest

from rerank_ray.cli import mlflow_lines
from rerank_ray.config import RunConfig
from rerank_ray.tune.tracking import flatten_params, redact_config, redact_uri


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("https://alice:s3cret@mlflow.example.com:5000", "https://alice:***@mlflow.example.com:5000"),
        ("https://ghp_abc123@mlflow.example.com/", "https://***@mlflow.example.com/"),
        ("postgresql://u:p%40ss@db:5432/mlflow", "postgresql://u:***@db:5432/mlflow"),
        (
            "https://host/mlflow?access_token=abc&region=eu&X-Amz-Signature=ff",
            "https://host/mlflow?access_token=***&region=eu&X-Amz-Signature=***",
        ),
        # Nothing secret: unchanged, byte for byte.
        ("http://10.0.0.12:5000", "http://10.0.0.12:5000"),
        ("sqlite:////home/ray/mlflow.db", "sqlite:////home/ray/mlflow.db"),
        ("file:///tmp/mlruns", "file:///tmp/mlruns"),
        ("databricks", "databricks"),
    ],
)
def test_redact_uri(uri, expected):
    assert redact_uri(uri) == expected


def test_saved_configs_and_params_carry_no_credentials():
    cfg = RunConfig(mlflow={"tracking_uri": "https://bob:hunter2@mlflow.example.com"})
    saved = redact_config({"base": cfg.to_dict(), "name": "s"})
    assert saved["base"]["mlflow"]["tracking_uri"] == "https://bob:***@mlflow.example.com"
    assert cfg.mlflow.tracking_uri == "https://bob:hunter2@mlflow.example.com"  # the config is untouched
    params = flatten_params(cfg.to_dict())
    assert params["mlflow.tracking_uri"] == "https://bob:***@mlflow.example.com"
    assert not any("hunter2" in v for v in params.values())


def test_the_cli_summary_redacts_the_store():
    lines = mlflow_lines("https://bob:hunter2@mlflow.example.com", "e", "run1")
    assert "store https://bob:***@mlflow.example.com" in lines
    assert not any("hunter2" in line for line in lines)
