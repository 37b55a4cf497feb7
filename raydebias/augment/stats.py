"""Counts over the augmented rows (``stats.json["augment"]``) and the quarantine of untrainable rows.

Per op: ``generated = kept + dropped`` with ``dropped_by_reason``, from each row's candidates and drops.

Both come from ONE pass of Ray tasks over the part files (:func:`stats_and_quarantine`), a group of
parts each: a task counts its rows with Arrow kernels (:func:`count_batch`) and writes the quarantine
rows of its parts as one file of the quarantine directory; the driver merges the small count dicts
(:func:`merge_counts`). Nothing on the driver grows with the number of rows (issue 16, item 5).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from raydebias import schema as S
from raydebias.augment.candidates import DROPS
from raydebias.augment.clean import NEGATIVES, POSITIVES, TRAINABLE
from raydebias.augment.resume import FILES_PER_TASK, chunks
from raydebias.storage import StoragePath

__all__ = ["add_counts", "count_batch", "count_parts", "iter_parts", "merge_counts", "stats_and_quarantine",
           "untrainable_to_quarantine"]

COUNT_COLUMNS = [S.ID, TRAINABLE, POSITIVES, NEGATIVES, DROPS]


def _value_counts(values: pa.Array) -> dict[str, int]:
    if len(values) == 0:
        return {}
    vc = pc.value_counts(values)
    return dict(zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist(), strict=True))


def count_batch(batch: pa.Table) -> dict[str, Any]:
    """Counts of one batch of augmented rows (summed by :func:`merge_counts`), with Arrow kernels:
    kept candidates per op, drops per (op, reason), trainable rows."""
    ops = [pc.list_flatten(batch.column(c)).combine_chunks().field("op") if batch.num_rows else pa.array([], pa.string())
           for c in (POSITIVES, NEGATIVES)]
    drops = pc.list_flatten(batch.column(DROPS)).combine_chunks() if batch.num_rows else None
    dropped: dict[str, Counter] = defaultdict(Counter)
    if drops is not None and len(drops):
        # op and reason joined by a character neither contains (op names and reason codes are identifiers)
        keys = pc.binary_join_element_wise(drops.field("op"), drops.field("reason"), "\x1f")
        for key, n in _value_counts(keys).items():
            op, reason = key.split("\x1f", 1)
            dropped[op][reason] += n
    kept = Counter(_value_counts(pa.concat_arrays(ops)))
    trainable = pc.sum(pc.cast(batch.column(TRAINABLE), pa.int64())).as_py() or 0
    return {"rows": batch.num_rows, "trainable": trainable, "kept": kept, "dropped": dropped}


def add_counts(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts of several batches (:func:`count_batch`'s shape) summed into one of the same shape."""
    kept: Counter = Counter()
    dropped: dict[str, Counter] = defaultdict(Counter)
    for p in parts:
        kept.update(p["kept"])
        for op, reasons in p["dropped"].items():
            dropped[op].update(reasons)
    return {"rows": sum(p["rows"] for p in parts), "trainable": sum(p["trainable"] for p in parts), "kept": kept,
            "dropped": dropped}


def merge_counts(parts: list[dict[str, Any]], rows_in: int) -> dict[str, Any]:
    """Batch counts -> ``stats.json["augment"]``'s counts: rows, trainable/quarantined and per op
    ``generated = kept + dropped`` with ``dropped_by_reason``."""
    c = add_counts(parts)
    per_op = {}
    for op in sorted(set(c["kept"]) | set(c["dropped"])):
        d = dict(sorted(c["dropped"][op].items()))
        per_op[op] = {"generated": c["kept"][op] + sum(d.values()), "kept": c["kept"][op], "dropped": sum(d.values()),
                      "dropped_by_reason": d}
    return {"rows_in": rows_in, "rows_out": c["rows"], "trainable": c["trainable"],
            "quarantined": c["rows"] - c["trainable"], "ops": per_op}


def iter_parts(files: list[StoragePath], columns: list[str]) -> Iterator[pa.RecordBatch]:
    for f in files:
        yield from f.parquet_file().iter_batches(batch_size=4096, columns=columns)


def count_parts(files: list[StoragePath], quarantine: StoragePath | None, min_positives: int) -> dict[str, Any]:
    """One task's share: the counts of these part files and, when ``quarantine`` is a path, their
    untrainable rows written there as one Parquet file (none when they have none)."""
    counts, q = [], []
    for b in iter_parts(files, COUNT_COLUMNS):
        t = pa.Table.from_batches([b])
        counts.append(count_batch(t))
        if quarantine is not None and counts[-1]["trainable"] < t.num_rows:
            q.append(untrainable_to_quarantine(t, min_positives))
    if q:
        quarantine.write_parquet(pa.concat_tables(q))
    return add_counts(counts)


def stats_and_quarantine(path: StoragePath, rows_in: int, quarantine: StoragePath | None = None,
                         min_positives: int = 2) -> dict[str, Any]:
    """The counts of every part of ``path`` (``stats.json["augment"]``'s core) and, when ``quarantine``
    is a directory, its untrainable rows written into it, one file per task (the caller commits it)."""
    import ray

    from raydebias.runtime import remote

    files = path.glob("*.parquet")
    task = remote(count_parts, num_cpus=0.25)
    refs = [task.remote(c, quarantine / f"part-{i:05d}.parquet" if quarantine is not None else None, min_positives)
            for i, c in enumerate(chunks(files, FILES_PER_TASK))]
    return merge_counts(ray.get(refs), rows_in)


def untrainable_to_quarantine(batch: pa.Table, min_positives: int) -> pa.Table:
    rows = batch.filter(pc.invert(batch.column(TRAINABLE))).select([S.ID, POSITIVES, DROPS]).to_pylist()
    entries = []
    for r in rows:
        why = Counter(f"{d['op']}:{d['reason']}" for d in r[DROPS] or [])
        entries.append({S.STAGE: "augment", S.SPLIT: "train", S.REASON: "untrainable",
                        S.DETAIL: f"{len(r[POSITIVES] or [])} positive(s) < augment.min_positives={min_positives}; "
                                  f"drops: {dict(why) or 'none'}",
                        S.SOURCE_FILE: "augmented", S.ID: r[S.ID],
                        S.RAW: json.dumps({"positives": r[POSITIVES]}, default=str)})
    return S.quarantine_table(entries)
