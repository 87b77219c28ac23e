"""start_ray against a real local Ray: a need the machine cannot meet fails fast, with the
numbers, and leaves nothing running (the command runs in a subprocess, so the session's Ray
fixture does not stand in for the private Ray that `train` starts)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.slow


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without GPUs")
def test_train_with_use_gpu_on_a_cpu_machine_fails_fast_with_the_numbers(tiny_run_overrides, tmp_path):
    exe = [sys.executable, "-m", "rerank_ray.cli", "--log-dir", str(tmp_path / "logs")]
    args = ["train", "--no-eval", *tiny_run_overrides, "name=gpu", "scaling.use_gpu=true"]
    done = subprocess.run([*exe, *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "started a private local Ray" in done.stderr
    assert "training gpu needs GPU 1 at once (CPU 1 + GPU 1), but the Ray cluster has GPU 0" in done.stderr
    assert not (tmp_path / "out" / "gpu" / "model").exists()
