"""Benchmark augmentation against its limits, same rows and models in one run.

    .venv/bin/python bench/augment.py --rows 48

(a) the loop: what the authors' code does: every model loaded once in one process, each source row
    pushed through every stage in turn (batch of one);
(b) batched: one process running the same stages on batches of each stage's ``resources.batch_size``
    rows, no Ray: the limit of this box for these models (no serialisation, no scheduling);
(c) the pipeline: ``raydebias.augment.pipeline.build`` in both layouts: ``pools`` (one Ray Data actor
    pool per model, blocks streamed between pools; with ``--cold`` a first cold run too) and ``fused`` (every stage in each
    actor of one pool, one actor per core: what a CPU node runs, ``augment.layout=fused``); with
    ``--two-actors`` also the pools layout with 2 actors per pool.
All use the smoke config's tiny models and the shipped sample rows; load time is excluded from (a) and
(b). Prints rows/s of each, Ray Data's per-operator stats of the pools run and of the fused run,
and a final JSON line with ``ratio_pipeline_over_loop`` ((c)/(a) in rows/s, (c) = the fused layout) and
``ratio_pipeline_over_batched`` ((c)/(b)), the same ratios of the pools layout, each run's start-up share
(time to its first output block) and steady rows/s after it.
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
    """(seconds, seconds to the first output block, rows in that block) of one run of ``build``
    (``augment.layout`` of ``cfg``; ``actors`` per pool in the pools layout)."""
    import ray.data

    from raydebias.augment.pipeline import build
    from raydebias.augment.stage import stage_classes, stage_order

    a = cfg.augment
    classes = stage_classes()
    for s in stage_order(a):
        if (res := classes[s].resources(a)) is not None and a.layout == "pools":
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
    ap.add_argument("--fused-actors", type=int, default=os.cpu_count() or 2,
                    help="actors of the fused layout (default: one per core)")
    ap.add_argument("--two-actors", action="store_true", help="also run the pools layout with 2 actors per pool")
    ap.add_argument("--cold", action="store_true", help="also a first, cold pools run (the cluster's first workers)")
    args = ap.parse_args()

    import ray

    from raydebias.config import load_config
    from raydebias.runtime import init_ray

    # Logical CPUs for 2 actors x 9 pools x 0.5 CPU (+ tasks); physical cores stay what they are.
    over = ["ray.num_cpus=16"]
    fused = [*over, "augment.layout=fused", f"augment.fused.actors={args.fused_actors}", "augment.fused.num_cpus=1"]
    cfg = load_config(REPO / "jobs/configs/smoke.yaml", over)
    table = source_rows(args.rows)
    loop_s = sequential(table, cfg)
    print(json.dumps({"loop_s": round(loop_s, 2)}), flush=True)
    batched_s = batched(table, cfg)
    print(json.dumps({"batched_s": round(batched_s, 2)}), flush=True)
    init_ray(cfg)
    runs: dict[str, tuple[float, float, int]] = {}
    try:
        def run(name: str, overrides: list[str], actors: int = 1, stats: bool = False) -> None:
            runs[name] = pipeline(table, load_config(REPO / "jobs/configs/smoke.yaml", overrides), actors,
                                  args.block_rows, stats)
            s, start, _ = runs[name]
            print(json.dumps({name: round(s, 2), "to_first_block_s": round(start, 2)}), flush=True)

        # Every build() starts its own pools (actors, model loads): a second run saves only the cluster's worker
        # processes and the OS file cache.
        if args.cold:
            run("pools_cold_s", over)
        run("pools_s", over, stats=True)
        run("fused_s", fused, stats=True)
        if args.two_actors:
            run("pools_2_actors_s", over, actors=2)
    finally:
        ray.shutdown()
    n = table.num_rows

    def steady(name: str) -> float:
        s, start, first = runs[name]
        return round((n - first) / max(s - start, 1e-9), 2)

    pools_s, fused_s = runs["pools_s"][0], runs["fused_s"][0]
    print(json.dumps({
        "rows": n, "block_rows": args.block_rows, "cpus_physical": os.cpu_count(), "fused_actors": args.fused_actors,
        "loop_s": round(loop_s, 2), "batched_s": round(batched_s, 2),
        **{k: round(v[0], 2) for k, v in runs.items()},
        "loop_rows_per_s": round(n / loop_s, 2), "batched_rows_per_s": round(n / batched_s, 2),
        "pools_rows_per_s": round(n / pools_s, 2), "fused_rows_per_s": round(n / fused_s, 2),
        # (c) is the pipeline as a CPU node runs it (augment.layout=fused); the pools layout is what GPUs run
        "ratio_pipeline_over_loop": round(loop_s / fused_s, 3), "ratio_pipeline_over_batched": round(batched_s / fused_s, 3),
        "ratio_pools_over_loop": round(loop_s / pools_s, 3), "ratio_pools_over_batched": round(batched_s / pools_s, 3),
        # The first output block's arrival bounds start-up from above (it includes that block's own work).
        "startup_share": {k: round(v[1] / v[0], 3) for k, v in runs.items()},
        "steady_rows_per_s": {k: steady(k) for k in runs},
    }))


if __name__ == "__main__":
    main()
