"""Tracking URIs are logged, printed and saved with their credentials redacted."""

from __future__ import annotations

import pytest

from rerank_ray.config import RunConfig
from rerank_ray.study.tracking import flatten_params, mlflow_lines, redact_config, redact_uri


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


# -- the tracking server, checked before a study starts -------------------------------------


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block exits: nothing listens there


def test_an_unreachable_tracking_server_is_named_in_seconds_with_its_password_redacted():
    import time

    from rerank_ray.study.tracking import TrackingUnreachable, check_tracking_server

    uri = f"http://alice:s3cret@127.0.0.1:{_closed_port()}"
    t0 = time.perf_counter()
    with pytest.raises(TrackingUnreachable) as e:
        check_tracking_server(uri)
    assert time.perf_counter() - t0 < 10
    message = str(e.value)
    assert "\n" not in message and "s3cret" not in message
    assert "the MLflow tracking server http://alice:***@127.0.0.1:" in message and "refused" in message


def test_a_server_that_accepts_but_never_answers_times_out():
    import socket

    from rerank_ray.study.tracking import TrackingUnreachable, check_tracking_server

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)  # the kernel accepts the connection; nobody ever answers
        with pytest.raises(TrackingUnreachable, match="0.5 s timeout"):
            check_tracking_server(f"http://127.0.0.1:{s.getsockname()[1]}", timeout_s=0.5)


def test_any_http_answer_proves_the_server_is_up_and_local_stores_need_none():
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from rerank_ray.study.tracking import check_tracking_server

    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            seen.append(self.path)
            self.send_response(200 if self.path == "/health" else 401)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        check_tracking_server(f"http://u:p@127.0.0.1:{port}")
        check_tracking_server(f"http://127.0.0.1:{port}/prefix/")  # 401: it answered
        assert seen == ["/health", "/prefix/health"]
    finally:
        server.shutdown()
    check_tracking_server("sqlite:///nowhere/mlflow.db")  # no server to check
