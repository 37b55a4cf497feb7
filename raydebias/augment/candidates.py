"""Candidates, entities and drops: the Arrow types every augmentation op reads and writes.

A batch flowing through the augmentation ops is a ``pa.Table`` with the source columns
(``raydebias.schema.SOURCE_COLUMNS``) plus:

- ``post_entities``, ``summary_entities``: list<ENTITY>, filled by the NER stage before any op runs;
- ``candidates``: list<CANDIDATE>, each op appends its own;
- ``drops``: list<DROP>, every candidate an op or the cleaner rejected, and every op error, with a reason.

Ops never mutate their input: :func:`append` returns a new table. Ops do not import Ray.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import pyarrow as pa

from raydebias.faults import Failed, isolated
from raydebias.schema import (  # noqa: F401  (re-exported: ops build candidates and entities from here)
    CANDIDATE_LIST,
    CANDIDATE_TYPE,
    DROP_LIST,
    DROP_TYPE,
    DROPS,
    ENTITY_LIST,
    ENTITY_TYPE,
    entity,
)

POST_ENTITIES, SUMMARY_ENTITIES, CANDIDATES = "post_entities", "summary_entities", "candidates"
# CANDIDATE_TYPE, DROP_TYPE and the list types are declared in raydebias/schema.py (the train stage
# reads them too).


def norm(text: str) -> str:
    """Comparison key of a text: case- and whitespace-insensitive (duplicates, equal-to-reference)."""
    return " ".join(text.lower().split())


def candidate(text: str, op: str, *, positive: bool = False, toxicity: float | None = None,
              entities: list[dict] | None = None, **info: Any) -> dict[str, Any]:
    """One candidate dict of CANDIDATE_TYPE; extra keyword arguments go to ``info`` (JSON)."""
    return {"text": text, "op": op, "positive": positive, "toxicity": toxicity, "entities": entities,
            "info": json.dumps(info, sort_keys=True, default=str) if info else None}


def drop(op: str, reason: str, detail: str = "", text: str | None = None) -> dict[str, Any]:
    return {"op": op, "reason": reason, "detail": detail, "text": text}


def ensure_columns(batch: pa.Table) -> pa.Table:
    """Add empty ``candidates``/``drops`` (and entity) columns a batch does not have yet."""
    n = batch.num_rows
    for name, typ in ((CANDIDATES, CANDIDATE_LIST), (DROPS, DROP_LIST)):
        if name not in batch.column_names:
            batch = batch.append_column(pa.field(name, typ), pa.array([[] for _ in range(n)], typ))
    for name in (POST_ENTITIES, SUMMARY_ENTITIES):
        if name not in batch.column_names:
            batch = batch.append_column(pa.field(name, ENTITY_LIST), pa.nulls(n, ENTITY_LIST))
    return batch


def rows(batch: pa.Table) -> list[dict[str, Any]]:
    return batch.to_pylist()


def _set(batch: pa.Table, name: str, values: list, typ: pa.DataType) -> pa.Table:
    idx = batch.schema.get_field_index(name)
    arr = pa.array(values, typ)
    if idx < 0:
        return batch.append_column(pa.field(name, typ), arr)
    return batch.set_column(idx, pa.field(name, typ), arr)


def append(batch: pa.Table, new_candidates: Sequence[list[dict]], new_drops: Sequence[list[dict]]) -> pa.Table:
    """A new table: each row's candidates and drops extended with the given per-row lists."""
    batch = ensure_columns(batch)
    if len(new_candidates) != batch.num_rows or len(new_drops) != batch.num_rows:
        raise ValueError(f"append: {batch.num_rows} rows but {len(new_candidates)} candidate lists "
                         f"and {len(new_drops)} drop lists")
    cands = [(old or []) + list(new) for old, new in zip(batch.column(CANDIDATES).to_pylist(), new_candidates, strict=True)]
    drops = [(old or []) + list(new) for old, new in zip(batch.column(DROPS).to_pylist(), new_drops, strict=True)]
    return _set(_set(batch, CANDIDATES, cands, CANDIDATE_LIST), DROPS, drops, DROP_LIST)


def set_column(batch: pa.Table, name: str, values: list, typ: pa.DataType) -> pa.Table:
    return _set(batch, name, values, typ)


RowResult = tuple[list[dict], list[dict]]  # (candidates, drops) produced for one source row


def apply_rows(batch: pa.Table, op: str, fn: Callable[[list[dict]], list[RowResult]]) -> pa.Table:
    """Run ``fn`` on all rows at once (models batch well); isolate failures row by row.

    ``fn(rows) -> [(candidates, drops)]`` one pair per row. If it raises on the whole batch, each
    row is retried alone, and a row that still fails gets a drop ``(op, "error", <exception>)`` and no
    candidate from this op: one bad row never kills the job (issue: faults and resume).
    """
    batch = ensure_columns(batch)
    results = [([], [drop(op, "error", r.error)]) if isinstance(r, Failed) else r
               for r in isolated(fn, rows(batch), op)]
    return append(batch, [r[0] for r in results], [r[1] for r in results])
