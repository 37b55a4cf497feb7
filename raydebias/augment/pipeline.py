"""The augmentation stage on Ray Data: the ONLY place that wires augmentation stages into actor pools.

    sources ─► reference ─► [ner] ─► [backtranslate] ─► [toxic_rewrite] ─► [low_confidence]
            ─► [entity_swap] ─► [mask_fill] ─► [regenerate] ─► clean ─► [ner_candidates] ─► [toxicity]
            ─► finalize

The stages come from the registry (augment/registry.py) and their order from what each declares it
needs (augment/stage.py ``stage_order``): the drawing above is the default. Cleaning (scaffolding
strip, too short, duplicates) runs before the candidates are annotated and scored, so their entity
spans and toxicity belong to the exact text that is stored (augment/clean.py). Each bracket is a
``map_batches`` actor pool (model loaded once per actor) with the CPU count, GPU fraction, batch size
and size of its ``augment.<section>.resources``; the pools stream into each other. The steps without a
model run inside a neighbouring pool's actors (reference in ner's, clean in regenerate's, finalize in
toxicity's: :func:`stage_chains`), not as Ray tasks. Whether pools ask for GPUs comes from ``device``
(never from the cluster's current resources, ENV.md HANG 1) and pools that cannot start fail after
``ray.wait_for_min_actors_s`` instead of waiting forever. Sources arrive in blocks of
``augment.block_rows`` rows and each CPU pool cuts a block into its own batches (:func:`in_batches`), so
a row's batch never depends on scheduling (GPU pools take Ray Data's batches: ``runtime.actor_pool``).
``augment.layout=fused`` instead runs every stage in each actor of one pool (one process per core on
CPU nodes), with the same rows out.

Outputs (``raydebias.outputs.RunDir``): ``augmented/`` (one row per source, AUGMENTED_SCHEMA, written
part by part as blocks finish), ``quarantine/augment/`` (rows with too few positives to train, with why)
and ``stats.json["augment"]`` (augment/stats.py: Ray tasks over the parts, nothing per row on the driver).
A re-run skips sources already written (augment/resume.py: their ids broadcast to the source readers).
Streamed into training (``--stage all``): :func:`augment_stream` hands the same pools' output to the
trainer as a lazy dataset, writing each finished block on the way (augment/stream.py).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pyarrow as pa

from raydebias import schema as S
from raydebias.augment.clean import (
    AUGMENTED_SCHEMA,
    Finalize,
    FinalizeRules,
    add_reference,
)
from raydebias.augment.resume import AugmentRun, augment_complete, list_written, prepare_augment, unwritten
from raydebias.augment.stage import stage_classes, stage_order
from raydebias.augment.stats import count_batch, merge_counts, stats_and_quarantine
from raydebias.augment.stream import write_part
from raydebias.config import AugmentConfig, Config
from raydebias.errors import PoolStartError

log = logging.getLogger(__name__)

def model_stages(cfg: AugmentConfig) -> tuple[str, ...]:
    """The stages that load a model, in order: one actor pool each."""
    classes = stage_classes()
    return tuple(s for s in stage_order(cfg) if classes[s].resources(cfg) is not None)


def pool_cpus(cfg: AugmentConfig) -> float:
    """CPUs the augmentation pools hold when they all run (streamed into training, for its resource check)."""
    if cfg.layout == "fused":
        return cfg.fused.num_cpus * cfg.fused.actors
    classes = stage_classes()
    return sum(classes[s].resources(cfg).num_cpus * classes[s].resources(cfg).actors for s in model_stages(cfg))


def in_batches(fn: Any, block: pa.Table, batch_size: int) -> pa.Table:
    """``fn`` over ``block`` cut into batches of ``batch_size`` rows, in order (THE batching of both layouts)."""
    if block.num_rows <= batch_size:
        return fn(block)
    return pa.concat_tables([fn(block.slice(i, batch_size)) for i in range(0, block.num_rows, batch_size)],
                            promote_options="default")


# A stage without a model runs on the whole block (cleaning): no batch size of its own.
WHOLE_BLOCK = 1 << 62


class StageActor:
    """The Ray adapter of a CHAIN of stages, built once per actor in its own process (device resolved there):
    one model stage and the stages without a model that follow it (the pools layout), or every stage (the
    fused layout). ``first``/``last``: it also adds the reference candidate before / finalizes after.

    Each block it is handed goes through its stages in order, each on its own ``resources.batch_size``
    batches (:func:`in_batches`): a row's batch depends only on its block, never on scheduling (ops seed
    per batch), so both layouts give the same rows. Stages without a model ride along in a neighbour's
    actor instead of running as Ray tasks: tasks with a fraction of a CPU each made Ray start a worker
    process per task (17 of them in bench/augment.py, 87 s before the first block on 2 cores)."""

    def __init__(self, stages: tuple[str, ...], cfg: AugmentConfig, use_gpu: bool, seed: int, threads: int,
                 classes: dict[str, type], first: bool, last: bool):
        import torch

        from raydebias.models import actor_device

        torch.set_num_threads(max(1, threads))
        device = actor_device(use_gpu)
        self.stages, self.first = [], first
        for name in stages:
            cls, res = classes[name], classes[name].resources(cfg)
            fn = cls.from_config(cfg, device=device, seed=seed) if res is not None else cls.from_config(cfg)
            self.stages.append((fn, res.batch_size if res is not None else WHOLE_BLOCK))
        self.finalize = Finalize(FinalizeRules.from_config(cfg)) if last else None

    def __call__(self, block: pa.Table) -> pa.Table:
        if self.first:
            block = add_reference(block)
        for fn, batch_size in self.stages:
            block = in_batches(fn, block, batch_size)
        return self.finalize(block) if self.finalize is not None else block


def stage_chains(cfg: AugmentConfig, classes: dict[str, type]) -> list[tuple[str, ...]]:
    """The stages in pipeline order, one chain per actor pool: the fused layout's one chain, or each model
    stage with the stages without a model that follow it (those before the first model stage, with it)."""
    order = stage_order(cfg, classes)
    if cfg.layout == "fused":
        return [order]
    chains: list[list[str]] = []
    lead: list[str] = []
    for name in order:
        if classes[name].resources(cfg) is not None:
            chains.append([*lead, name])
            lead = []
        elif chains:
            chains[-1].append(name)
        else:
            lead.append(name)
    if lead:
        raise ValueError(f"augment: no stage loads a model, nothing to run {lead} in")
    return [tuple(c) for c in chains]


def build(sources: Any, cfg: Config, use_gpu: bool, classes: dict[str, type] | None = None) -> Any:
    """Source rows (Ray dataset) -> augmented rows (lazy Ray dataset, AUGMENTED_SCHEMA). Streams.

    ``augment.layout``: ``pools`` (one actor pool per model stage on its own resources and GPU fraction,
    the stages without a model in the pool before them) or ``fused`` (every stage in each actor of one
    pool, ``augment.fused``'s resources): :func:`stage_chains`, :class:`StageActor`. Both cut blocks into
    each stage's batches the same way, so they give the same rows. ``classes`` replaces stage classes by
    name (fault injection in tests, custom ops, bench/scale.py's trivial stages).
    """
    from raydebias.runtime import actor_pool

    a = cfg.augment
    classes = {**stage_classes(), **(classes or {})}
    chains = stage_chains(a, classes)
    ds = sources
    for i, chain in enumerate(chains):
        model = next(s for s in chain if classes[s].resources(a) is not None) if a.layout == "pools" else "fused"
        res = a.fused if a.layout == "fused" else classes[model].resources(a)
        ds = actor_pool(ds, StageActor, res, use_gpu, name=model, whole_blocks=True, constructor_kwargs={
            "stages": chain, "cfg": a, "use_gpu": use_gpu and res.num_gpus > 0, "seed": cfg.seed,
            "threads": int(res.num_cpus), "classes": classes, "first": i == 0, "last": i == len(chains) - 1})
    return ds


def augment_stream(cfg: Config, out: Any, run: AugmentRun, written: Any) -> Any:
    """The augmented rows as ONE lazy dataset for a consumer (training) that runs while it is produced.

    ``written`` is a dataset of the parts in ``DIR/augmented`` listed when it executes; the other half
    streams every source not written by then through the pools, each finished batch also written to
    ``DIR/augmented`` (:func:`write_part`). Both halves decide what is done at execution time, so a
    re-execution (a worker restart) neither loses nor repeats a row. Call :func:`finish_augment` after.
    """
    dest = out.augmented_dir
    dest.mkdir(parents=True, exist_ok=True)
    sources = unwritten(out.sources_dir("train"), dest, cfg.augment.block_rows)
    fresh = build(sources, cfg, run.gpu).map_batches(write_part, batch_format="pyarrow", num_cpus=0.1,
                                                     fn_kwargs={"dest": dest})
    return written.union(fresh)


def pool_start_error(cfg: Config, gpu: bool, e: BaseException) -> PoolStartError | None:
    """A clear error when Ray Data gave up starting an actor pool (wait_for_min_actors_s), else None."""
    if "Timed out while starting actors" not in str(e):
        return None
    classes = stage_classes()
    res = {st: classes[st].resources(cfg.augment) for st in model_stages(cfg.augment)}
    if cfg.augment.layout == "fused":
        res = {"fused": cfg.augment.fused}
    pools = ", ".join(f"{st}(num_cpus={r.num_cpus:g}, num_gpus={r.num_gpus if gpu else 0:g})" for st, r in res.items())
    return PoolStartError(
        f"an augmentation actor pool could not start within ray.wait_for_min_actors_s="
        f"{cfg.ray.wait_for_min_actors_s}s: the cluster cannot give it the resources it asks for "
        f"(device={cfg.device}; pools: {pools}). On a cluster without GPUs use device=cpu; otherwise "
        f"lower the pools' num_cpus/num_gpus/actors or add nodes.")


def finish_augment(cfg: Config, out: Any, run: AugmentRun) -> dict[str, Any]:
    """Counts over ``DIR/augmented`` (rows in = rows out, asserted; no id twice), quarantine of untrainable
    rows and stats: Ray tasks over groups of parts, nothing per row on the driver (augment/stats.py)."""
    import ray

    dest = out.augmented_dir
    t0 = time.perf_counter()
    written = ray.get(list_written(dest).count)  # also refuses an id written twice
    with out.quarantine_dir("augment").replacing() as q:
        stats = stats_and_quarantine(dest, run.rows_in, q, cfg.augment.min_positives)
        if not q.glob("*.parquet"):  # no untrainable row: an empty table, so readers find the schema
            (q / "empty.parquet").write_parquet(S.QUARANTINE_SCHEMA.empty_table())
    stats["seconds"] = round(time.perf_counter() - run.t0, 2)
    stats["seconds_bookkeeping"] = round(time.perf_counter() - t0 + run.seconds_prepare, 2)
    stats["resumed_from"] = run.done
    if not stats["rows_out"] == written == run.rows_in:
        raise AssertionError(f"augment: {run.rows_in} source rows in but {stats['rows_out']} augmented rows out")
    out.update_stats("augment", stats)
    return stats


def run_augment_stage(cfg: Config, out: Any, classes: dict[str, type] | None = None) -> dict[str, Any]:
    """Augment ``DIR/data/sources`` into ``DIR/augmented`` (resuming), then write quarantine and stats.
    ``classes`` replaces stage classes by name (as in :func:`build`; bench/scale.py's trivial ops)."""
    run = prepare_augment(cfg, out)
    if run.pending is not None:
        dest = out.augmented_dir
        dest.mkdir(parents=True, exist_ok=True)
        try:
            # Parts of augment.rows_per_part rows: few files for the bookkeeping passes at millions of rows;
            # a kill loses at most the parts being assembled (their rows are redone on resume).
            build(run.pending, cfg, run.gpu, classes).write_parquet(dest.path, filesystem=dest.fs,
                                                            min_rows_per_file=cfg.augment.rows_per_part,
                                                            ray_remote_args={"num_cpus": 0.1})
        except Exception as e:
            if (err := pool_start_error(cfg, run.gpu, e)) is not None:
                raise err from e
            raise
    return finish_augment(cfg, out, run)


# The stage entry points (raydebias/stages.py) and, re-exported, the names that lived here before the
# split into resume / stats / stream.
__all__ = ["AUGMENTED_SCHEMA", "AugmentRun", "StageActor", "augment_complete",
           "augment_stream", "build", "count_batch", "finish_augment", "list_written", "merge_counts",
           "model_stages", "pool_cpus", "pool_start_error", "prepare_augment", "run_augment_stage",
           "stage_classes", "stage_order", "write_part"]
