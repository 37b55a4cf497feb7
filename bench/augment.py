"""Benchmark augmentation against its limits, same rows and models in one run.

    .venv/bin/python bench/augment.py --rows 48

(a) the loop: what the authors' code does: every model loaded once in one process, each source row
    pushed through every stage in turn (batch of one);
(b) batched: one process running the same stages on batches of each stage's ``resources.batch_size``
    rows, no Ray: the limit of this box for these models (no serialisation, no scheduling);
(c) the pipeline: ``raydebias.augment.pipeline.build``, one Ray Data actor pool per model, batches
    streamed between pools; cold (actor start included: what a user waits for), then warm, then with 2
    actors per op.
All use the smoke config's tiny models and the shipped sample rows; load time is excluded from (a) and
(b). Prints rows/s of each, Ray Data's per-operator stats of the warm run, and a final JSON line with
``ratio_pipeline_over_loop`` ((c)/(a) in rows/s) and ``ratio_pipeline_over_batched`` ((c)/(b)).
Absolute times on shared 2-core machines are noisy: compare the ratios of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("RAYDEBIAS_PROGRESS", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pyarrow as pa  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def source_rows(n: int) -> pa.Table:
    import json as _json

    from raydebias.data import detect_layout, record_to_row, resolve_source

    rows = []
    for p in resolve_source("sample:tldr/train"):
        layout = detect_layout(p)
        rows += [record_to_row(_json.loads(line), layout)[0] for line in Path(p).read_text().splitlines()]
    return pa.Table.from_pylist([rows[i % len(rows)] | {"id": f"{rows[i % len(rows)]['id']}-{i}"} for i in range(n)])


def sequential(table: pa.Table, cfg) -> float:
    import torch

    from raydebias.augment.clean import Finalize, FinalizeRules, add_reference
    from raydebias.augment.stage import stage_classes, stage_order

    torch.set_num_threads(1)
    classes = stage_classes()
    stages = [classes[s].from_config(cfg.augment, device="cpu", seed=cfg.seed) for s in stage_order(cfg.augment)]
    final = Finalize(FinalizeRules.from_config(cfg.augment))
    t0 = time.perf_counter()
    for i in range(table.num_rows):
        b = add_reference(table.slice(i, 1))
        for st in stages:
            b = st(b)
        final(b)
    return time.perf_counter() - t0


def batched(table: pa.Table, cfg) -> float:
    """(b): the same stages in this process on batches of each stage's ``resources.batch_size`` rows (a
    stage without resources, 16): every stage runs over the whole table before the next, as one process
    would run them with no pipelining."""
    import torch

    from raydebias.augment.clean import Finalize, FinalizeRules, add_reference
    from raydebias.augment.stage import stage_classes, stage_order

    torch.set_num_threads(1)
    classes = stage_classes()
    names = stage_order(cfg.augment)
    stages = [(classes[s].from_config(cfg.augment, device="cpu", seed=cfg.seed), classes[s].resources(cfg.augment))
              for s in names]
    final = Finalize(FinalizeRules.from_config(cfg.augment))
    t0 = time.perf_counter()
    t = add_reference(table)
    for st, res in stages:
        size = res.batch_size if res is not None else 16
        t = pa.concat_tables([st(t.slice(i, size)) for i in range(0, t.num_rows, size)])
    final(t)
    return time.perf_counter() - t0


def pipeline(table: pa.Table, cfg, actors: int, block_rows: int, stats: bool = False) -> tuple[float, float, int]:
    """(seconds, seconds to the first output block, rows in that block) of one run of ``build``."""
    import ray.data

    from raydebias.augment.pipeline import build
    from raydebias.augment.stage import stage_classes, stage_order

    a = cfg.augment
    classes = stage_classes()
    for s in stage_order(a):
        if (res := classes[s].resources(a)) is not None:
            res.actors = actors
    t0 = time.perf_counter()
    # Source blocks as the data stage's Parquet parts give them (one block would cross the pools one pool at a
    # time: nothing to overlap)
    blocks = [table.slice(i, block_rows) for i in range(0, table.num_rows, block_rows)]
    ds = build(ray.data.from_arrow(blocks), cfg, use_gpu=False)
    n, first, first_at = 0, 0, None
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):  # blocks as they come out
        n += batch.num_rows
        if first_at is None:
            first, first_at = batch.num_rows, time.perf_counter()
    seconds = time.perf_counter() - t0
    assert n == table.num_rows
    if stats:
        print(ds.stats(), file=sys.stderr, flush=True)
    # Start-up (actors built, models loaded, the first block through every pool) vs steady state after it.
    return seconds, first_at - t0, first


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=48)
    ap.add_argument("--block-rows", type=int, default=16, help="rows per source block handed to the pipeline")
    args = ap.parse_args()

    import ray

    from raydebias.config import load_config
    from raydebias.runtime import init_ray

    # Logical CPUs for 2 actors x 9 pools x 0.5 CPU (+ tasks); physical cores stay what they are.
    over = ["ray.num_cpus=16"]
    cfg = load_config(REPO / "jobs/configs/smoke.yaml", over)
    table = source_rows(args.rows)
    loop_s = sequential(table, cfg)
    print(json.dumps({"loop_s": round(loop_s, 2)}), flush=True)
    batched_s = batched(table, cfg)
    print(json.dumps({"batched_s": round(batched_s, 2)}), flush=True)
    init_ray(cfg)
    try:
        def run(actors: int, stats: bool = False) -> tuple[float, float, int]:
            return pipeline(table, load_config(REPO / "jobs/configs/smoke.yaml", over), actors, args.block_rows, stats)

        cold_1, cold_start, _ = run(1)
        print(json.dumps({"pipeline_cold_s": round(cold_1, 2), "to_first_block_s": round(cold_start, 2)}), flush=True)
        # Not warmer than the first: every build() starts its own pools (actors, model loads); what a second run
        # saves is the cluster's worker processes and the OS file cache.
        warm_1, warm_start, warm_first = run(1, stats=True)
        print(json.dumps({"pipeline_warm_s": round(warm_1, 2), "to_first_block_s": round(warm_start, 2)}), flush=True)
        warm_2, _, _ = run(2)
    finally:
        ray.shutdown()
    n = table.num_rows
    print(json.dumps({
        "rows": n, "cpus_physical": os.cpu_count(), "loop_s": round(loop_s, 2), "batched_s": round(batched_s, 2),
        "pipeline_cold_s": round(cold_1, 2), "pipeline_warm_s": round(warm_1, 2), "pipeline_2_actors_s": round(warm_2, 2),
        "loop_rows_per_s": round(n / loop_s, 2), "batched_rows_per_s": round(n / batched_s, 2),
        "pipeline_rows_per_s": round(n / warm_1, 2),
        "ratio_pipeline_over_loop": round(loop_s / warm_1, 3), "ratio_pipeline_over_batched": round(batched_s / warm_1, 3),
        "ratio_cold_pipeline_over_loop": round(loop_s / cold_1, 3),
        # The first output block's arrival bounds start-up from above (it includes that block's own work).
        "startup_share": round(warm_start / warm_1, 3),
        "steady_rows_per_s": round((n - warm_first) / max(warm_1 - warm_start, 1e-9), 2),
        "scaling_2_over_1_actors": round(warm_1 / warm_2, 3),
    }))


if __name__ == "__main__":
    main()
