"""The optimizer step, side by side: torch's AdamW as DeepSpeed built it before (``torch_adam``,
the default per-tensor implementation on CPU) against the fused kernel the project now asks
for (``rerank_ray/train/deepspeed.py``), on the parameters of the 6-layer MiniLM cross-encoder.

    python bench/optimizer.py [--layers 6] [--steps 10] [--threads 2]

Prints seconds per step for each and the ratio (default / fused); both run in this process,
one after the other, on the same parameters and gradients.
"""

from __future__ import annotations

import argparse
import time

import torch

from rerank_ray.config import RunConfig
from rerank_ray.models import build_model


def seconds_per_step(params: list[torch.nn.Parameter], steps: int, **kwargs: bool) -> float:
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01, **kwargs)
    optimizer.step()  # allocate the moments outside the timing
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = build_model(
        RunConfig.model_validate({"name": "bench", "model": {"num_layers": args.layers}}).model
    )
    params = [p for p in model.parameters() if p.requires_grad]
    generator = torch.Generator().manual_seed(0)
    for p in params:
        p.grad = torch.randn(p.shape, generator=generator) * 1e-3
    n = sum(p.numel() for p in params)
    default = seconds_per_step(params, args.steps)
    fused = seconds_per_step(params, args.steps, fused=True)
    print(f"AdamW step over {n / 1e6:.1f} M parameters, {args.threads} threads, {args.steps} steps each")
    print(f"  default (per-tensor): {default:.3f} s/step")
    print(f"  fused:                {fused:.3f} s/step")
    print(f"  ratio default/fused:  {default / fused:.2f}")


if __name__ == "__main__":
    main()
