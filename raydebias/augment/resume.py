"""Resume by source id: what ``DIR/augmented`` already holds and what is left of ``DIR/data/sources``.

A re-run skips sources already written; a part file cut short by a kill is detected, removed and its
rows redone, so nothing is lost or duplicated.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from raydebias import schema as S
from raydebias.config import Config
from raydebias.errors import StageInputError
from raydebias.storage import StoragePath

log = logging.getLogger(__name__)

__all__ = ["AugmentRun", "SkipWritten", "augment_complete", "finished_ids", "prepare_augment", "unwritten"]


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


def augment_complete(out: Any) -> bool:
    """``DIR/augmented`` holds a row for every source row of a complete data stage."""
    src = out.sources_dir("train")
    return src.complete and len(finished_ids(out.augmented_dir)) >= src.parquet_rows()


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
            pending = unwritten(pending, out.augmented_dir)
    else:
        log.info("augment: all %d sources already written", rows_in)
    return AugmentRun(rows_in, done, pending, gpu, time.perf_counter())


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


def unwritten(sources: Any, dest: StoragePath) -> Any:
    """THE way augmentation skips what it already wrote: the source rows (Ray dataset) whose id is not in
    ``dest``, listed when the dataset EXECUTES (a resumed run, and a stream re-executed after a worker
    restart, both see what was written up to then)."""
    from ray.data import ActorPoolStrategy

    return sources.map_batches(SkipWritten, batch_format="pyarrow", num_cpus=0.1, compute=ActorPoolStrategy(size=1),
                               fn_constructor_kwargs={"dest": dest})
