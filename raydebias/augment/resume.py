"""Resume by source id: what ``DIR/augmented`` already holds and what is left of ``DIR/data/sources``.

A re-run skips sources already written; a part file cut short by a kill is detected, removed and its
rows redone, so nothing is lost or duplicated.

Nothing here holds one row per source on the driver (issue 16, item 5). The ids already written are
read by Ray tasks, a group of part files each, and merged by one more task into ONE Arrow array in the
object store (:func:`list_written`): the driver keeps its row count and an ObjectRef. The source rows
still to augment come from :class:`UnwrittenSources`, a datasource whose read tasks filter their rows
against that broadcast array (``pyarrow.compute.is_in``). It lists ``DIR/augmented`` when the dataset
EXECUTES, not when it is built: a stream re-executed after a Ray Train worker restart sees the parts
written up to then (and reads them back instead, ``train.trainer.parts_dataset``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from raydebias import schema as S
from raydebias.config import Config
from raydebias.errors import StageInputError
from raydebias.runtime import remote
from raydebias.storage import StoragePath

log = logging.getLogger(__name__)

__all__ = ["AugmentRun", "UnwrittenSources", "augment_complete", "list_written", "prepare_augment",
           "readable_rows", "unwritten"]

# Part files whose ids one task reads. Parts hold ``augment.rows_per_part`` rows (staged) or one block
# (streamed), so a task reads a few thousand to a few hundred thousand ids.
FILES_PER_TASK = 64


def chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def ids_of_parts(files: list[StoragePath]) -> pa.Array:
    """The ids of these part files, concatenated; parts that cannot be read (cut short by a kill) are
    removed: their rows are simply redone."""
    ids = []
    for f in files:
        try:
            ids.append(f.read_table(columns=[S.ID]).column(S.ID).combine_chunks())
        except Exception as e:  # noqa: BLE001 - a truncated/corrupt part: its rows are redone
            log.warning("augment: removing unreadable part %s (%s); its rows will be redone", f.name, e)
            f.unlink(missing_ok=True)
    return pa.concat_arrays(ids) if ids else pa.array([], pa.string())


def merge_ids(where: str, *arrays: pa.Array) -> tuple[int, pa.Array]:
    """(count, ids) of every part; an id written twice is refused (it cannot happen by construction)."""
    ids = pa.concat_arrays([a.cast(pa.string()) for a in arrays]) if arrays else pa.array([], pa.string())
    if pc.count_distinct(ids).as_py() != len(ids):
        counts = pc.value_counts(ids)
        dup = counts.filter(pc.greater(counts.field("counts"), 1)).field("values").to_pylist()
        raise RuntimeError(f"augment: {where} holds ids written in two parts: {sorted(dup)[:5]} "
                           f"({len(dup)} in all); refusing to build on it")
    return len(ids), ids


@dataclass(frozen=True)
class Written:
    """What ``DIR/augmented`` holds, in the object store: its row count and its ids (ObjectRefs)."""

    count: Any  # ObjectRef[int]
    ids: Any  # ObjectRef[pa.Array]


def list_written(dest: StoragePath) -> Written:
    """List ``dest``'s parts NOW and start the tasks that read and merge their ids (non-blocking)."""
    files = dest.glob("*.parquet")
    parts = [remote(ids_of_parts, num_cpus=0.25).remote(c) for c in chunks(files, FILES_PER_TASK)]
    count, ids = remote(merge_ids, num_cpus=0.25, num_returns=2).remote(dest.uri, *parts)
    return Written(count, ids)


def readable_rows(dest: StoragePath) -> int | None:
    """Rows in ``dest``'s part files from their footers (no Ray, no ids); None when a part is unreadable."""
    total = 0
    for f in dest.glob("*.parquet"):
        try:
            total += f.parquet_rows()
        except Exception:  # noqa: BLE001 - a part cut short by a kill: not complete
            return None
    return total


def augment_complete(out: Any) -> bool:
    """``DIR/augmented`` holds a row for every source row of a complete data stage (planning: footers only)."""
    src = out.sources_dir("train")
    if not src.complete:
        return False
    rows = readable_rows(out.augmented_dir)
    return rows is not None and rows >= src.parquet_rows()


class UnwrittenSources:
    """The source rows of ``src`` whose id is not in ``dest``, as a Ray Data datasource.

    ``get_read_tasks`` (called when the dataset executes) lists ``dest`` and starts :func:`list_written`;
    each read task reads one source file in blocks of ``block_rows`` rows (``augment.block_rows``: the
    unit the pools stream) and keeps the rows whose id is not in the broadcast array. Built lazily (``datasource()``) so importing this module needs no Ray.
    """

    @staticmethod
    def datasource(src: StoragePath, dest: StoragePath, block_rows: int) -> Any:
        from ray.data.block import BlockMetadata
        from ray.data.datasource import Datasource, ReadTask

        def read(f: StoragePath, written: Any) -> Any:
            import ray

            done = ray.get(written.ids)
            for batch in f.parquet_file().iter_batches(batch_size=block_rows):
                t = pa.Table.from_batches([batch]).cast(S.SOURCE_SCHEMA)
                if len(done):
                    t = t.filter(pc.invert(pc.is_in(t.column(S.ID), value_set=done)))
                if t.num_rows:
                    yield t

        class Source(Datasource):
            def estimate_inmemory_data_size(self) -> int | None:
                return None

            def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                               data_context: Any = None) -> list[Any]:
                written = list_written(dest)
                return [ReadTask(lambda f=f: read(f, written),
                                 BlockMetadata(num_rows=None, size_bytes=None, input_files=[str(f)], exec_stats=None),
                                 schema=S.SOURCE_SCHEMA, per_task_row_limit=per_task_row_limit)
                        for f in src.glob("*.parquet")]

        return Source()


def unwritten(src: StoragePath, dest: StoragePath, block_rows: int = 256) -> Any:
    """THE way augmentation skips what it already wrote: the source rows in ``src`` (a Ray dataset)
    whose id is not in ``dest``, listed when the dataset EXECUTES (a resumed run, and a stream
    re-executed after a worker restart, both see what was written up to then)."""
    import ray.data

    return ray.data.read_datasource(UnwrittenSources.datasource(src, dest, block_rows))


@dataclass
class AugmentRun:
    """What is left to augment in a run directory: rows in, rows already written, the pending sources."""

    rows_in: int
    done: int  # rows already in DIR/augmented when the run started
    pending: Any  # Ray dataset of the source rows still to augment, or None
    gpu: bool
    t0: float
    seconds_prepare: float = 0.0  # counting what was already written (in stats: seconds_bookkeeping)


def prepare_augment(cfg: Config, out: Any) -> AugmentRun:
    """Find how much ``DIR/augmented`` already holds and what is left of ``DIR/data/sources``."""
    import ray

    from raydebias.runtime import use_gpus

    t0 = time.perf_counter()
    src = out.sources_dir("train")
    if not src.complete:
        raise StageInputError(f"augment: the source rows {src} are missing or incomplete: run --stage data first")
    rows_in = src.parquet_rows()
    done = ray.get(list_written(out.augmented_dir).count)
    gpu = use_gpus(cfg.device)
    if not gpu:
        log.info("augment: device=%s -> every pool runs on CPU resources (num_gpus=0)", cfg.device)
    pending = None
    if rows_in - done > 0:
        if done:
            log.info("augment: resuming: %d of %d sources already written, %d to go", done, rows_in, rows_in - done)
        pending = unwritten(src, out.augmented_dir, cfg.augment.block_rows)
    else:
        log.info("augment: all %d sources already written", rows_in)
    return AugmentRun(rows_in, done, pending, gpu, t0, time.perf_counter() - t0)
