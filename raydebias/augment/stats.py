"""Counts over the augmented rows (``stats.json["augment"]``) and the quarantine of untrainable rows.

Per op: ``generated = kept + dropped`` with ``dropped_by_reason``, from each row's candidates and drops.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from raydebias import schema as S
from raydebias.augment.candidates import DROPS
from raydebias.augment.clean import NEGATIVES, POSITIVES, TRAINABLE
from raydebias.storage import StoragePath

__all__ = ["count_batch", "iter_parts", "merge_counts", "stats_of", "untrainable_to_quarantine"]


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


def iter_parts(path: StoragePath, columns: list[str]) -> Iterator[pa.RecordBatch]:
    for f in path.glob("*.parquet"):
        yield from f.parquet_file().iter_batches(batch_size=4096, columns=columns)


def stats_of(path: StoragePath, rows_in: int) -> dict[str, Any]:
    # Bookkeeping over the written parts, streamed on the driver: a Ray execution per pass cost ~25 s
    # of scheduling on small clusters for what is a column scan.
    cols = [S.ID, TRAINABLE, POSITIVES, NEGATIVES, DROPS]
    parts = [count_batch(pa.Table.from_batches([b])) for b in iter_parts(path, cols)]
    return merge_counts(parts, rows_in)


def untrainable_to_quarantine(batch: pa.Table, min_positives: int) -> pa.Table:
    rows = [r for r in batch.select([S.ID, TRAINABLE, POSITIVES, DROPS]).to_pylist() if not r[TRAINABLE]]
    entries = []
    for r in rows:
        why = Counter(f"{d['op']}:{d['reason']}" for d in r[DROPS] or [])
        entries.append({S.STAGE: "augment", S.SPLIT: "train", S.REASON: "untrainable",
                        S.DETAIL: f"{len(r[POSITIVES] or [])} positive(s) < augment.min_positives={min_positives}; "
                                  f"drops: {dict(why) or 'none'}",
                        S.SOURCE_FILE: "augmented", S.ID: r[S.ID],
                        S.RAW: json.dumps({"positives": r[POSITIVES]}, default=str)})
    return S.quarantine_table(entries)
