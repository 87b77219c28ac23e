"""The GPU check script and its parts skip cleanly on a machine without CUDA."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from rerank_ray.config import PROJECT_ROOT

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path")


def test_gpu_check_skips_without_cuda(tmp_path):
    env = {**os.environ, "PY": sys.executable, "OUT": str(tmp_path / "out")}
    proc = subprocess.run(
        ["bash", str(PROJECT_ROOT / "bench" / "gpu_check.sh")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "gpu_check: skipped, no CUDA device"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("script", ["gpu_throughput.py", "gpu_eval.py"])
def test_gpu_benches_skip_without_cuda(script):
    proc = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "bench" / script)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("skipped, no CUDA device")
