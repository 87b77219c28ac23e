"""Mixed precision of the matmuls: ``model.autocast`` (and a bi-encoder teacher's ``autocast``).

``torch.autocast`` runs matmuls (linear layers, attention) in bfloat16 while the weights, the
optimizer state, the losses and the returned scores stay float32. It is the CPU's counterpart
of TF32 on a GPU: faster on a CPU with native bf16 instructions (avx512_bf16, AMX), with scores
that move a little (``bench/cpu_bf16.py``; the ratios and the score change are in
docs/BENCHMARKS.md). The setting:

- ``auto``: scoring and evaluation on CUDA run under bf16 autocast, a CPU in float32; training
  leaves precision to DeepSpeed (``deepspeed.precision``: bf16 weights on a GPU);
- ``bf16``: bf16 autocast wherever the model runs, CPU included, training included;
- ``off``: float32 everywhere (what bit-for-bit comparisons across batchings need).
"""

from __future__ import annotations

import torch


def scoring_autocast(setting: str, device: torch.device | str) -> torch.autocast:
    """The autocast context for scoring on `device` (``auto`` = bf16 on CUDA only)."""
    device = torch.device(device)
    enabled = setting == "bf16" or (setting == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def training_autocast(setting: str, device: torch.device | str) -> torch.autocast:
    """The autocast context around a training forward pass (only ``bf16`` enables it: with
    ``auto``, DeepSpeed's precision decides)."""
    device = torch.device(device)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=setting == "bf16")
