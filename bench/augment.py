"""Benchmark augmentation: Ray Data actor pools vs. a plain sequential per-row loop, same rows and models.

    .venv/bin/python bench/augment.py --rows 48

The loop is what the authors' code does: load every model once in one process, then push each source
row through every op in turn (batch of one). The pipeline is `raydebias.augment.pipeline.build`: one
actor pool per model, batches streamed between pools. Both use the smoke config's tiny models and the
shipped sample rows. Prints rows/s of each, the ratio (pipeline / loop), and the pipeline with 1 vs 2
actors per op. Load time is excluded from the loop and included (actor start) in the pipeline, which
is what a user waits for; the printed `pipeline_warm_s` repeats the run on a warm cluster to separate
the two. Absolute times on shared 2-core machines are noisy: compare ratios from one run.
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

    from raydebias.augment.clean import Finalize, add_reference
    from raydebias.augment.stage import stage_classes, stage_order

    torch.set_num_threads(1)
    classes = stage_classes()
    stages = [classes[s].from_config(cfg.augment, device="cpu", seed=cfg.seed) for s in stage_order(cfg.augment)]
    final = Finalize(cfg.augment)
    t0 = time.perf_counter()
    for i in range(table.num_rows):
        b = add_reference(table.slice(i, 1))
        for st in stages:
            b = st(b)
        final(b)
    return time.perf_counter() - t0


def pipeline(table: pa.Table, cfg, actors: int) -> float:
    import ray.data

    from raydebias.augment.pipeline import build
    from raydebias.augment.stage import stage_classes, stage_order

    a = cfg.augment
    classes = stage_classes()
    for s in stage_order(a):
        if (res := classes[s].resources(a)) is not None:
            res.actors = actors
    t0 = time.perf_counter()
    n = build(ray.data.from_arrow(table), cfg, use_gpu=False).count()
    assert n == table.num_rows
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=48)
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
    init_ray(cfg)
    try:
        cold_1 = pipeline(table, load_config(REPO / "jobs/configs/smoke.yaml", over), actors=1)
        print(json.dumps({"pipeline_cold_s": round(cold_1, 2)}), flush=True)
        warm_1 = pipeline(table, load_config(REPO / "jobs/configs/smoke.yaml", over), actors=1)
        print(json.dumps({"pipeline_warm_s": round(warm_1, 2)}), flush=True)
        warm_2 = pipeline(table, load_config(REPO / "jobs/configs/smoke.yaml", over), actors=2)
    finally:
        ray.shutdown()
    n = table.num_rows
    print(json.dumps({
        "rows": n, "cpus_physical": os.cpu_count(), "loop_s": round(loop_s, 2),
        "pipeline_cold_s": round(cold_1, 2), "pipeline_warm_s": round(warm_1, 2), "pipeline_2_actors_s": round(warm_2, 2),
        "loop_rows_per_s": round(n / loop_s, 2), "pipeline_rows_per_s": round(n / warm_1, 2),
        "ratio_pipeline_over_loop": round(loop_s / warm_1, 3), "ratio_cold_pipeline_over_loop": round(loop_s / cold_1, 3),
        "scaling_2_over_1_actors": round(warm_1 / warm_2, 3),
    }))


if __name__ == "__main__":
    main()
