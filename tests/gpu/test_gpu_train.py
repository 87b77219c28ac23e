"""GPU check (``make test-gpu``): ZeRO-2 and ZeRO-3 bf16 training of a tiny decoder and of a
random Qwen2.5-0.5B-shaped decoder through bench/gpu_throughput.py, in a subprocess (DeepSpeed's
process group stays out of the pytest process). Prints pairs/s, tokens/s, peak memory and MFU.
About 3 minutes on one H100; skipped without CUDA."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from rerank_ray.config import PROJECT_ROOT

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.timeout(480),
]


def test_zero2_and_zero3_bf16_training_of_decoders(tmp_path):
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(PROJECT_ROOT / "bench" / "gpu_throughput.py"),
            "--steps",
            "30",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=450,
    )
    print(proc.stdout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(out.read_text())
    assert {(r["model"], r["zero_stage"]) for r in results} == {
        (m, s) for m in ("tiny", "qwen2.5-0.5b") for s in (2, 3)
    }
    for r in results:
        assert math.isfinite(r["loss_first"]) and math.isfinite(r["loss_last"]), r
        assert r["pairs_per_s"] > 0 and 0 < r["mfu"] < 1, r
        assert r["peak_mem_GiB"] < 70, r
    by = {(r["model"], r["zero_stage"]): r for r in results}
    # The 0.5B model: ~494 M parameters (Qwen2.5-0.5B without the LM head, plus the score head).
    assert 480 < by[("qwen2.5-0.5b", 2)]["params_M"] < 510
    # ZeRO-3 on one GPU still partitions at load and must not use more memory than ZeRO-2 by much.
    assert by[("qwen2.5-0.5b", 3)]["peak_mem_GiB"] < 1.5 * by[("qwen2.5-0.5b", 2)]["peak_mem_GiB"]
