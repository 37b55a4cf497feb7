"""The augmentation stage on Ray Data: the ONLY place that wires augmentation ops into actor pools.

    sources ─► reference ─► [ner] ─► [backtranslate] ─► [toxic_rewrite] ─► [low_confidence]
            ─► [entity_swap] ─► [mask_fill] ─► [regenerate] ─► clean ─► [ner: candidates] ─► [toxicity]
            ─► finalize

Cleaning (scaffolding strip, too short, duplicates) runs before the candidates are annotated and scored,
so their entity spans and toxicity belong to the exact text that is stored (augment/clean.py). Each
bracket is a ``map_batches`` actor pool (model loaded once per actor) with its own CPU count,
GPU fraction, batch size and size from config; the pools stream into each other. Whether pools ask
for GPUs comes from ``device`` (never from the cluster's current resources, ENV.md HANG 1) and pools
that cannot start fail after ``ray.wait_for_min_actors_s`` instead of waiting forever.

Outputs (``raydebias.outputs.RunDir``): ``augmented/`` (one row per source, AUGMENTED_SCHEMA, written
part by part as blocks finish), ``quarantine/augment/`` (rows with too few positives to train, with why)
and ``stats.json["augment"]``. A re-run skips sources already written (resume by source id); a part
file cut short by a kill is detected, removed and its rows redone, so nothing is lost or duplicated.

Streamed into training (``--stage all``): :func:`augment_stream` hands the same pools' output to the
trainer as a lazy dataset, writing each finished batch to ``augmented/`` on the way (:func:`write_part`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from raydebias import schema as S
from raydebias.augment.candidates import DROPS
from raydebias.augment.clean import (
    AUGMENTED_SCHEMA,
    NEGATIVES,
    POSITIVES,
    TRAINABLE,
    CleanCandidates,
    Finalize,
    add_reference,
)
from raydebias.config import AugmentConfig, Config, OpResources
from raydebias.errors import PoolStartError, StageInputError
from raydebias.storage import StoragePath

log = logging.getLogger(__name__)

OP_NAMES = ("backtranslate", "toxic_rewrite", "low_confidence", "entity_swap", "mask_fill", "regenerate")


def stage_classes() -> dict[str, type]:
    """Stage name -> class (a plain dict; imported lazily so the driver does not load torch for nothing)."""
    from raydebias.augment.annotate import AnnotateEntities, ScoreToxicity
    from raydebias.augment.backtranslate import Backtranslate
    from raydebias.augment.entity_swap import EntitySwap
    from raydebias.augment.low_confidence import LowConfidence
    from raydebias.augment.mask_fill import MaskFill
    from raydebias.augment.regenerate import Regenerate
    from raydebias.augment.toxic_rewrite import ToxicRewrite

    return {"clean": CleanCandidates, "ner": AnnotateEntities, "ner_candidates": AnnotateEntities, "toxicity": ScoreToxicity,
            "backtranslate": Backtranslate, "toxic_rewrite": ToxicRewrite, "low_confidence": LowConfidence,
            "entity_swap": EntitySwap, "mask_fill": MaskFill, "regenerate": Regenerate}


def model_stages(cfg: AugmentConfig) -> tuple[str, ...]:
    """The stages that load a model, in order: one actor pool each."""
    return ("ner", *cfg.ops, "ner_candidates", "toxicity")


def stage_order(cfg: AugmentConfig) -> tuple[str, ...]:
    """Every stage between ``add_reference`` and ``Finalize``, in order (cleaning before scoring)."""
    return ("ner", *cfg.ops, "clean", "ner_candidates", "toxicity")


def pool_cpus(cfg: AugmentConfig) -> float:
    """CPUs the augmentation pools hold when they all run (streamed into training, for its resource check)."""
    return sum(stage_resources(cfg, s).num_cpus * stage_resources(cfg, s).actors for s in model_stages(cfg))


def augment_complete(out: Any) -> bool:
    """``DIR/augmented`` holds a row for every source row of a complete data stage."""
    src = out.sources_dir("train")
    return src.complete and len(finished_ids(out.augmented_dir)) >= src.parquet_rows()


def stage_resources(cfg: AugmentConfig, stage: str) -> OpResources:
    if stage in ("ner", "ner_candidates"):
        return cfg.ner.resources
    if stage == "toxicity":
        return cfg.toxicity.resources
    return getattr(cfg, stage).resources


class StageActor:
    """One actor of a pool: resolves its device in its own process, loads the stage's model once."""

    def __init__(self, stage: str, cfg: AugmentConfig, use_gpu: bool, seed: int, threads: int,
                 cls: type | None = None):
        import torch

        from raydebias.models import resolve_device

        torch.set_num_threads(max(1, threads))
        self.stage = stage
        cls = cls or stage_classes()[stage]
        self.fn = cls(cfg, device=resolve_device("gpu" if use_gpu else "cpu"), seed=seed)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.fn(batch)


def clean_batch(batch: pa.Table, cfg: AugmentConfig) -> pa.Table:
    return CleanCandidates(cfg)(batch)


def build(sources: Any, cfg: Config, use_gpu: bool, classes: dict[str, type] | None = None) -> Any:
    """Source rows (Ray dataset) -> augmented rows (lazy Ray dataset, AUGMENTED_SCHEMA). Streams.

    ``classes`` replaces stage classes by name (fault injection in tests, custom ops).
    """
    from ray.data import ActorPoolStrategy

    from raydebias.pools import actor_pool

    a = cfg.augment
    ds = sources.map_batches(add_reference, batch_format="pyarrow", num_cpus=0.1)
    for stage in stage_order(a):
        if stage == "clean":  # no model: plain tasks
            ds = ds.map_batches(clean_batch, batch_format="pyarrow", num_cpus=0.1, fn_kwargs={"cfg": a})
            continue
        res = stage_resources(a, stage)
        ds = actor_pool(ds, StageActor, res, use_gpu, name=stage, constructor_kwargs={
            "stage": stage, "cfg": a, "use_gpu": use_gpu and res.num_gpus > 0, "seed": cfg.seed,
            "threads": int(res.num_cpus), "cls": (classes or {}).get(stage)})
    return ds.map_batches(Finalize, batch_format="pyarrow", num_cpus=0.1, compute=ActorPoolStrategy(size=1),
                          fn_constructor_args=(a,))


# --------------------------------------------------------------------------------------------------
# Resume
# --------------------------------------------------------------------------------------------------


def finished_ids(out_dir: str | Path | StoragePath) -> set[str]:
    """Ids already in ``augmented/``; part files that cannot be read (cut short by a kill) are removed."""
    done: set[str] = set()
    for f in StoragePath.of(out_dir).glob("*.parquet"):
        try:
            ids = f.read_table(columns=[S.ID]).column(S.ID).to_pylist()
        except Exception as e:  # noqa: BLE001 - a truncated/corrupt part: its rows are simply redone
            log.warning("augment: removing unreadable part %s (%s); its rows will be redone", f.name, e)
            f.unlink()
            continue
        dup = done.intersection(ids)
        if dup:  # cannot happen by construction; refuse to build on a directory that says otherwise
            raise RuntimeError(f"augment: {f} repeats ids already written elsewhere: {sorted(dup)[:5]}")
        done.update(ids)
    return done


# --------------------------------------------------------------------------------------------------
# Counting
# --------------------------------------------------------------------------------------------------


def count_batch(batch: pa.Table) -> dict[str, Any]:
    """Counts of one batch of augmented rows (summed by :func:`merge_counts`)."""
    c: dict[str, Any] = {"rows": batch.num_rows, "trainable": 0, "kept": Counter(), "dropped": defaultdict(Counter)}
    for row in batch.select([TRAINABLE, POSITIVES, NEGATIVES, DROPS]).to_pylist():
        c["trainable"] += bool(row[TRAINABLE])
        for cand in (row[POSITIVES] or []) + (row[NEGATIVES] or []):
            c["kept"][cand["op"]] += 1
        for d in row[DROPS] or []:
            c["dropped"][d["op"]][d["reason"]] += 1
    return c


def merge_counts(parts: list[dict[str, Any]], rows_in: int) -> dict[str, Any]:
    rows = sum(p["rows"] for p in parts)
    trainable = sum(p["trainable"] for p in parts)
    kept: Counter = Counter()
    dropped: dict[str, Counter] = defaultdict(Counter)
    for p in parts:
        kept.update(p["kept"])
        for op, reasons in p["dropped"].items():
            dropped[op].update(reasons)
    per_op = {}
    for op in sorted(set(kept) | set(dropped)):
        d = dict(sorted(dropped[op].items()))
        per_op[op] = {"generated": kept[op] + sum(d.values()), "kept": kept[op], "dropped": sum(d.values()),
                      "dropped_by_reason": d}
    return {"rows_in": rows_in, "rows_out": rows, "trainable": trainable, "quarantined": rows - trainable,
            "ops": per_op}


def _iter_parts(path: StoragePath, columns: list[str]):
    for f in path.glob("*.parquet"):
        yield from f.parquet_file().iter_batches(batch_size=4096, columns=columns)


def _stats_of(path: StoragePath, rows_in: int) -> dict[str, Any]:
    # Bookkeeping over the written parts, streamed on the driver: a Ray execution per pass cost ~25 s
    # of scheduling on small clusters for what is a column scan.
    cols = [S.ID, TRAINABLE, POSITIVES, NEGATIVES, DROPS]
    parts = [count_batch(pa.Table.from_batches([b])) for b in _iter_parts(path, cols)]
    return merge_counts(parts, rows_in)


def _untrainable_to_quarantine(batch: pa.Table, min_positives: int) -> pa.Table:
    rows = [r for r in batch.select([S.ID, TRAINABLE, POSITIVES, DROPS]).to_pylist() if not r[TRAINABLE]]
    details = []
    for r in rows:
        why = Counter(f"{d['op']}:{d['reason']}" for d in r[DROPS] or [])
        details.append(f"{len(r[POSITIVES] or [])} positive(s) < augment.min_positives={min_positives}; "
                       f"drops: {dict(why) or 'none'}")
    n = len(rows)
    return pa.Table.from_arrays(
        [pa.array(["augment"] * n), pa.array(["train"] * n), pa.array(["untrainable"] * n), pa.array(details),
         pa.array(["augmented"] * n), pa.array([-1] * n, pa.int64()), pa.array([r[S.ID] for r in rows]),
         pa.array([json.dumps({"positives": r[POSITIVES]}, default=str) for r in rows])],
        schema=S.QUARANTINE_SCHEMA,
    )


# --------------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------------


@dataclass
class AugmentRun:
    """What is left to augment in a run directory: rows in, ids already written, the pending sources."""

    rows_in: int
    done: set[str]
    pending: Any  # Ray dataset of the source rows still to augment, or None
    gpu: bool
    t0: float


def prepare_augment(cfg: Config, out: Any) -> AugmentRun:
    """Find what ``DIR/augmented`` already holds and what is left of ``DIR/data/sources``."""
    import ray.data

    from raydebias.runtime import use_gpus

    src = out.sources_dir("train")
    if not src.complete:
        raise StageInputError(f"augment: the source rows {src} are missing or incomplete: run --stage data first")
    rows_in = src.parquet_rows()
    done = finished_ids(out.augmented_dir)
    gpu = use_gpus(cfg.device)
    if not gpu:
        log.info("augment: device=%s -> every pool runs on CPU resources (num_gpus=0)", cfg.device)
    pending = None
    if rows_in - len(done) > 0:
        pending = ray.data.read_parquet(src.path, filesystem=src.fs)
        if done:
            log.info("augment: resuming: %d of %d sources already written, %d to go", len(done), rows_in,
                     rows_in - len(done))
            done_ref = frozenset(done)
            pending = pending.filter(lambda r: r[S.ID] not in done_ref)
    else:
        log.info("augment: all %d sources already written", rows_in)
    return AugmentRun(rows_in, done, pending, gpu, time.perf_counter())


def write_part(batch: pa.Table, dest: StoragePath) -> pa.Table:
    """Pass-through: write a batch of augmented rows as one part file, atomically, and hand it on.

    Used when augmentation streams into training: the rows reach the trainer and ``DIR/augmented`` at
    once. The file name derives from the batch's ids, so a retried task rewrites the same file instead of
    duplicating rows; the file is written whole (StoragePath.write_bytes), so readers never see a part.
    """
    if batch.num_rows == 0:
        return batch
    ids = batch.column(S.ID).to_pylist()
    name = "part-" + hashlib.sha1("\n".join(sorted(ids)).encode()).hexdigest()[:20] + ".parquet"
    (dest / name).write_parquet(batch)
    return batch


class SkipWritten:
    """Drops source rows whose augmented row is already in ``dest``, as listed when the actor starts.

    The stream into training is re-executed when Ray Train restarts failed workers: rows the failed
    attempt already wrote are then read back from the parts (``parts_dataset``) instead of being
    augmented and written a second time.
    """

    def __init__(self, dest: StoragePath):
        self.done = frozenset(finished_ids(dest))

    def __call__(self, batch: pa.Table) -> pa.Table:
        if not self.done:
            return batch
        keep = [i not in self.done for i in batch.column(S.ID).to_pylist()]
        return batch.filter(pa.array(keep, pa.bool_()))


def augment_stream(cfg: Config, out: Any, run: AugmentRun, written: Any) -> Any:
    """The augmented rows as ONE lazy dataset for a consumer (training) that runs while it is produced.

    ``written`` is a dataset of the parts in ``DIR/augmented`` listed when it executes; the other half
    streams every source not written by then through the pools, each finished batch also written to
    ``DIR/augmented`` (:func:`write_part`). Both halves decide what is done at execution time, so a
    re-execution (a worker restart) neither loses nor repeats a row. Call :func:`finish_augment` after.
    """
    import ray.data
    from ray.data import ActorPoolStrategy

    dest = out.augmented_dir
    dest.mkdir(parents=True, exist_ok=True)
    src = out.sources_dir("train")
    sources = ray.data.read_parquet(src.path, filesystem=src.fs).map_batches(
        SkipWritten, batch_format="pyarrow", num_cpus=0.1, compute=ActorPoolStrategy(size=1),
        fn_constructor_kwargs={"dest": dest})
    fresh = build(sources, cfg, run.gpu).map_batches(write_part, batch_format="pyarrow", num_cpus=0.1,
                                                     fn_kwargs={"dest": dest})
    return written.union(fresh)


def pool_start_error(cfg: Config, gpu: bool, e: BaseException) -> PoolStartError | None:
    """A clear error when Ray Data gave up starting an actor pool (wait_for_min_actors_s), else None."""
    if "Timed out while starting actors" not in str(e):
        return None
    pools = ", ".join(f"{st}(num_cpus={stage_resources(cfg.augment, st).num_cpus:g}, num_gpus="
                      f"{stage_resources(cfg.augment, st).num_gpus if gpu else 0:g})"
                      for st in model_stages(cfg.augment))
    return PoolStartError(
        f"an augmentation actor pool could not start within ray.wait_for_min_actors_s="
        f"{cfg.ray.wait_for_min_actors_s}s: the cluster cannot give it the resources it asks for "
        f"(device={cfg.device}; pools: {pools}). On a cluster without GPUs use device=cpu; otherwise "
        f"lower the pools' num_cpus/num_gpus/actors or add nodes.")


def finish_augment(cfg: Config, out: Any, run: AugmentRun) -> dict[str, Any]:
    """Counts over ``DIR/augmented`` (rows in = rows out, asserted), quarantine of untrainable rows, stats."""
    dest = out.augmented_dir
    stats = _stats_of(dest, run.rows_in)
    stats["seconds"] = round(time.perf_counter() - run.t0, 2)
    stats["resumed_from"] = len(run.done)
    if stats["rows_out"] != run.rows_in:
        raise AssertionError(f"augment: {run.rows_in} source rows in but {stats['rows_out']} augmented rows out")
    q = [_untrainable_to_quarantine(pa.Table.from_batches([b]), cfg.augment.min_positives)
         for b in _iter_parts(dest, [S.ID, TRAINABLE, POSITIVES, DROPS])]
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


__all__ = ["AUGMENTED_SCHEMA", "OP_NAMES", "AugmentRun", "augment_stream", "build", "count_batch", "finish_augment",
           "augment_complete", "finished_ids", "merge_counts", "model_stages", "pool_cpus", "pool_start_error", "prepare_augment", "run_augment_stage", "stage_classes", "stage_order",
           "write_part"]
