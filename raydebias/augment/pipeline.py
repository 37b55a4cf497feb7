"""The augmentation stage on Ray Data: the ONLY place that wires augmentation stages into actor pools.

    sources ─► reference ─► [ner] ─► [backtranslate] ─► [toxic_rewrite] ─► [low_confidence]
            ─► [entity_swap] ─► [mask_fill] ─► [regenerate] ─► clean ─► [ner_candidates] ─► [toxicity]
            ─► finalize

The stages come from the registry (augment/registry.py) and their order from what each declares it
needs (augment/stage.py ``stage_order``): the drawing above is the default. Cleaning (scaffolding
strip, too short, duplicates) runs before the candidates are annotated and scored, so their entity
spans and toxicity belong to the exact text that is stored (augment/clean.py). Each bracket is a
``map_batches`` actor pool (model loaded once per actor) with the CPU count, GPU fraction, batch size
and size of its ``augment.<section>.resources``; the pools stream into each other. Whether pools ask
for GPUs comes from ``device`` (never from the cluster's current resources, ENV.md HANG 1) and pools
that cannot start fail after ``ray.wait_for_min_actors_s`` instead of waiting forever.

Outputs (``raydebias.outputs.RunDir``): ``augmented/`` (one row per source, AUGMENTED_SCHEMA, written
part by part as blocks finish), ``quarantine/augment/`` (rows with too few positives to train, with why)
and ``stats.json["augment"]`` (augment/stats.py). A re-run skips sources already written
(augment/resume.py). Streamed into training (``--stage all``): :func:`augment_stream` hands the same
pools' output to the trainer as a lazy dataset, writing each finished batch on the way (augment/stream.py).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pyarrow as pa

from raydebias import schema as S
from raydebias.augment.candidates import DROPS
from raydebias.augment.clean import (
    AUGMENTED_SCHEMA,
    POSITIVES,
    TRAINABLE,
    Finalize,
    FinalizeRules,
    add_reference,
)
from raydebias.augment.resume import (
    AugmentRun,
    SkipWritten,
    augment_complete,
    finished_ids,
    prepare_augment,
    unwritten,
)
from raydebias.augment.stage import stage_classes, stage_order
from raydebias.augment.stats import count_batch, iter_parts, merge_counts, stats_of, untrainable_to_quarantine
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
    classes = stage_classes()
    return sum(classes[s].resources(cfg).num_cpus * classes[s].resources(cfg).actors for s in model_stages(cfg))


class StageActor:
    """The Ray adapter of one stage: resolves its device in its own process, builds the stage once."""

    def __init__(self, stage: str, cfg: AugmentConfig, use_gpu: bool, seed: int, threads: int, cls: type):
        import torch

        from raydebias.models import actor_device

        torch.set_num_threads(max(1, threads))
        self.stage = stage
        self.fn = cls.from_config(cfg, device=actor_device(use_gpu), seed=seed)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.fn(batch)


def run_task_stage(batch: pa.Table, cls: type, cfg: AugmentConfig) -> pa.Table:
    """A stage without a model (no resources) as a plain Ray task: built per batch, nothing to load."""
    return cls.from_config(cfg)(batch)


def build(sources: Any, cfg: Config, use_gpu: bool, classes: dict[str, type] | None = None) -> Any:
    """Source rows (Ray dataset) -> augmented rows (lazy Ray dataset, AUGMENTED_SCHEMA). Streams.

    ``classes`` replaces stage classes by name (fault injection in tests, custom ops).
    """
    from ray.data import ActorPoolStrategy

    from raydebias.runtime import actor_pool

    a = cfg.augment
    classes = {**stage_classes(), **(classes or {})}
    ds = sources.map_batches(add_reference, batch_format="pyarrow", num_cpus=0.1)
    for stage in stage_order(a, classes):
        cls = classes[stage]
        res = cls.resources(a)
        if res is None:  # no model: plain tasks
            ds = ds.map_batches(run_task_stage, batch_format="pyarrow", num_cpus=0.1,
                                fn_kwargs={"cls": cls, "cfg": a})
            continue
        ds = actor_pool(ds, StageActor, res, use_gpu, name=stage, constructor_kwargs={
            "stage": stage, "cfg": a, "use_gpu": use_gpu and res.num_gpus > 0, "seed": cfg.seed,
            "threads": int(res.num_cpus), "cls": cls})
    return ds.map_batches(Finalize, batch_format="pyarrow", num_cpus=0.1, compute=ActorPoolStrategy(size=1),
                          fn_constructor_args=(FinalizeRules.from_config(a),))


def augment_stream(cfg: Config, out: Any, run: AugmentRun, written: Any) -> Any:
    """The augmented rows as ONE lazy dataset for a consumer (training) that runs while it is produced.

    ``written`` is a dataset of the parts in ``DIR/augmented`` listed when it executes; the other half
    streams every source not written by then through the pools, each finished batch also written to
    ``DIR/augmented`` (:func:`write_part`). Both halves decide what is done at execution time, so a
    re-execution (a worker restart) neither loses nor repeats a row. Call :func:`finish_augment` after.
    """
    import ray.data

    dest = out.augmented_dir
    dest.mkdir(parents=True, exist_ok=True)
    src = out.sources_dir("train")
    sources = unwritten(ray.data.read_parquet(src.path, filesystem=src.fs), dest)
    fresh = build(sources, cfg, run.gpu).map_batches(write_part, batch_format="pyarrow", num_cpus=0.1,
                                                     fn_kwargs={"dest": dest})
    return written.union(fresh)


def pool_start_error(cfg: Config, gpu: bool, e: BaseException) -> PoolStartError | None:
    """A clear error when Ray Data gave up starting an actor pool (wait_for_min_actors_s), else None."""
    if "Timed out while starting actors" not in str(e):
        return None
    classes = stage_classes()
    res = {st: classes[st].resources(cfg.augment) for st in model_stages(cfg.augment)}
    pools = ", ".join(f"{st}(num_cpus={r.num_cpus:g}, num_gpus={r.num_gpus if gpu else 0:g})" for st, r in res.items())
    return PoolStartError(
        f"an augmentation actor pool could not start within ray.wait_for_min_actors_s="
        f"{cfg.ray.wait_for_min_actors_s}s: the cluster cannot give it the resources it asks for "
        f"(device={cfg.device}; pools: {pools}). On a cluster without GPUs use device=cpu; otherwise "
        f"lower the pools' num_cpus/num_gpus/actors or add nodes.")


def finish_augment(cfg: Config, out: Any, run: AugmentRun) -> dict[str, Any]:
    """Counts over ``DIR/augmented`` (rows in = rows out, asserted), quarantine of untrainable rows, stats."""
    dest = out.augmented_dir
    stats = stats_of(dest, run.rows_in)
    stats["seconds"] = round(time.perf_counter() - run.t0, 2)
    stats["resumed_from"] = len(run.done)
    if stats["rows_out"] != run.rows_in:
        raise AssertionError(f"augment: {run.rows_in} source rows in but {stats['rows_out']} augmented rows out")
    q = [untrainable_to_quarantine(pa.Table.from_batches([b]), cfg.augment.min_positives)
         for b in iter_parts(dest, [S.ID, TRAINABLE, POSITIVES, DROPS])]
    out.write_table(pa.concat_tables(q) if q else S.QUARANTINE_SCHEMA.empty_table(), out.quarantine_dir("augment"))
    out.update_stats("augment", stats)
    return stats


def run_augment_stage(cfg: Config, out: Any) -> dict[str, Any]:
    """Augment ``DIR/data/sources`` into ``DIR/augmented`` (resuming), then write quarantine and stats."""
    run = prepare_augment(cfg, out)
    if run.pending is not None:
        dest = out.augmented_dir
        dest.mkdir(parents=True, exist_ok=True)
        try:
            build(run.pending, cfg, run.gpu).write_parquet(dest.path, filesystem=dest.fs,
                                                            ray_remote_args={"num_cpus": 0.1})
        except Exception as e:
            if (err := pool_start_error(cfg, run.gpu, e)) is not None:
                raise err from e
            raise
    return finish_augment(cfg, out, run)


# The stage entry points (raydebias/stages.py) and, re-exported, the names that lived here before the
# split into resume / stats / stream.
__all__ = ["AUGMENTED_SCHEMA", "AugmentRun", "SkipWritten", "StageActor", "augment_complete",
           "augment_stream", "build", "count_batch", "finish_augment", "finished_ids", "merge_counts",
           "model_stages", "pool_cpus", "pool_start_error", "prepare_augment", "run_augment_stage",
           "stage_classes", "stage_order", "write_part"]
