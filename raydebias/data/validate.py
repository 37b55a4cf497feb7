"""Parsing and validation, pure (Arrow batch in, Arrow batch out; tested without Ray).

Every physical input record becomes exactly one row of either the kept dataset or the quarantine
(reasons in :data:`raydebias.schema.QUARANTINE_REASONS`). Held-out rows that share an id or a post with
a training row are quarantined as ``overlaps_train``, so evaluation never scores training data.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)

from raydebias import schema as S
from raydebias.data.layouts import Reject, record_to_row

# id/post/summary are nullable here (quarantined rows may lack them); SOURCE_SCHEMA is enforced on output.
PARSED_SCHEMA = pa.schema([
    *(f.with_nullable(True) for f in S.SOURCE_SCHEMA),
    pa.field(S.REC_FILE, pa.string()),
    pa.field(S.REC_LINE, pa.int64()),
    pa.field(S.REC_RANK, pa.int64()),
    pa.field(S.REASON, pa.string()),  # "" for kept rows
    pa.field(S.DETAIL, pa.string()),
    pa.field(S.RAW, pa.string()),  # filled only for quarantined rows
])


def parse_records(batch: pa.Table, layouts: dict[str, str], max_post_chars: int) -> pa.Table:
    """Raw records (``_file, _line, _raw``) -> rows of :data:`PARSED_SCHEMA`.

    Kept rows have ``reason == ""``; every other row carries a quarantine reason, a human-readable
    detail and its raw text. Exactly one output row per input row.
    """
    out: dict[str, list] = {name: [] for name in PARSED_SCHEMA.names}
    files = batch.column(S.REC_FILE).to_pylist()
    lines = batch.column(S.REC_LINE).to_pylist()
    raws = batch.column(S.REC_RAW).to_pylist()
    for path, line, raw in zip(files, lines, raws, strict=True):
        row: dict[str, Any] = {k: None for k in S.SOURCE_COLUMNS}
        rank, reason, detail = 0, "", ""
        try:
            if not raw.strip():
                raise Reject("blank_line", "empty line")
            try:
                rec = json.loads(raw.decode("utf-8", "surrogateescape"))
            except json.JSONDecodeError as e:
                raise Reject("invalid_json", f"not valid JSON: {e.msg} at column {e.colno}") from None
            row, rank = record_to_row(rec, layouts[path])
            if len(row[S.POST]) > max_post_chars:
                raise Reject("post_too_long", f"post has {len(row[S.POST])} chars > data.max_post_chars={max_post_chars}",
                             row[S.ID])
        except Reject as r:
            reason, detail = r.reason, r.detail
            row = {k: None for k in S.SOURCE_COLUMNS}
            row[S.ID] = r.rid
        for k in S.SOURCE_COLUMNS:
            out[k].append(row[k])
        out[S.REC_FILE].append(path)
        out[S.REC_LINE].append(line)
        out[S.REC_RANK].append(rank)
        out[S.REASON].append(reason)
        out[S.DETAIL].append(detail)
        out[S.RAW].append(raw.decode("utf-8", "backslashreplace") if reason else "")
    return pa.Table.from_pydict(out, schema=PARSED_SCHEMA)


META_COLUMNS = [S.ID, S.REC_FILE, S.REC_LINE, S.REC_RANK, S.REASON]
# Valid rows that a check across rows sends to quarantine (duplicate ids, held-out rows overlapping the
# training rows): Arrow tables, small next to the rows, merged in tasks and broadcast to the writers.
DECISION_SCHEMA = pa.schema([pa.field(S.REC_FILE, pa.string()), pa.field(S.REC_LINE, pa.int64()),
                             pa.field(S.REASON, pa.string()), pa.field(S.DETAIL, pa.string())])


def decision_keys(files: Any, lines: Any) -> pa.Array:
    """One string per (file, line): how a row is matched to its decision (the pair names a record)."""
    return pa.compute.binary_join_element_wise(files, pa.compute.cast(lines, pa.string()), "\x1f")


def find_duplicates(meta: pa.Table) -> pa.Table:
    """Valid rows sharing an id -> a :data:`DECISION_SCHEMA` table (``duplicate_id``, naming the kept
    row's ``file:line``) for all but the best row of each id.

    The best row has the lowest (rank, file, line): deterministic, whatever order blocks arrive in.
    ``meta`` holds only :data:`META_COLUMNS` (a task merges them from every block; Arrow kernels, no
    per-row Python).
    """
    valid = meta.filter(pa.compute.equal(meta.column(S.REASON), ""))
    if valid.num_rows == 0:
        return DECISION_SCHEMA.empty_table()
    valid = valid.sort_by([(S.ID, "ascending"), (S.REC_RANK, "ascending"), (S.REC_FILE, "ascending"),
                           (S.REC_LINE, "ascending")]).combine_chunks()
    ids = valid.column(S.ID).chunk(0) if valid.column(S.ID).num_chunks else pa.array([], pa.string())
    n = len(ids)
    # a row starts its id's run unless it repeats the previous row's id
    same = pa.compute.equal(ids.slice(1), ids.slice(0, n - 1))
    starts = pa.concat_arrays([pa.array([True]), pa.compute.invert(same)])
    at = pa.compute.binary_join_element_wise(valid.column(S.REC_FILE), pa.compute.cast(valid.column(S.REC_LINE),
                                                                                       pa.string()), ":")
    # the kept row of each run: its start's file:line, carried forward over the run
    kept_at = pa.compute.fill_null_forward(pa.compute.if_else(starts, at, pa.scalar(None, pa.string())))
    dup = pa.compute.invert(starts)
    detail = pa.compute.binary_join_element_wise(
        "id '", valid.column(S.ID), "' already kept from ", kept_at, "")
    return pa.Table.from_arrays(
        [valid.column(S.REC_FILE).filter(dup), valid.column(S.REC_LINE).filter(dup),
         pa.array(["duplicate_id"] * pa.compute.sum(pa.compute.cast(dup, pa.int64())).as_py(), pa.string()),
         detail.filter(dup)], schema=DECISION_SCHEMA)


def split_parsed(batch: pa.Table, decisions: pa.Table, keep: bool, split_name: str = "") -> pa.Table:
    """Parsed rows -> the kept source rows (``keep=True``) or the quarantine rows (``keep=False``).
    ``decisions`` (:data:`DECISION_SCHEMA`) names the valid rows quarantined by a check across rows
    (``duplicate_id``, ``overlaps_train``), matched by (file, line)."""
    at = pa.compute.index_in(decision_keys(batch.column(S.REC_FILE), batch.column(S.REC_LINE)),
                             value_set=decision_keys(decisions.column(S.REC_FILE), decisions.column(S.REC_LINE)))
    decided = pa.compute.is_valid(at)
    parse_ok = pa.compute.equal(batch.column(S.REASON), "")
    if keep:
        mask = pa.compute.and_(parse_ok, pa.compute.invert(decided))
        return batch.filter(mask).select(list(S.SOURCE_COLUMNS)).cast(S.SOURCE_SCHEMA)
    q = batch.filter(pa.compute.or_(pa.compute.invert(parse_ok), decided))
    at = at.filter(pa.compute.or_(pa.compute.invert(parse_ok), decided))
    reason, detail, raw = q.column(S.REASON).to_pylist(), q.column(S.DETAIL).to_pylist(), q.column(S.RAW).to_pylist()
    where = at.to_pylist()
    for i, d in enumerate(where):
        if reason[i] or d is None:
            continue
        reason[i], detail[i] = decisions.column(S.REASON)[d].as_py(), decisions.column(S.DETAIL)[d].as_py()
        # the row's content, re-encoded, so nothing is lost
        raw[i] = json.dumps({k: q.column(k)[i].as_py() for k in S.SOURCE_COLUMNS}, ensure_ascii=False)
    n = q.num_rows
    # built column by column (not with schema.quarantine_table's per-row dicts): this runs on every block
    # of the input, and the source columns are already Arrow arrays
    return pa.Table.from_arrays(
        [pa.array(["data"] * n, pa.string()), pa.array([split_name] * n, pa.string()),
         pa.array(reason, pa.string()), pa.array(detail, pa.string()), q.column(S.REC_FILE), q.column(S.REC_LINE),
         q.column(S.ID), pa.array(raw, pa.string())],
        schema=S.QUARANTINE_SCHEMA,
    )


def count_block(batch: pa.Table, decisions: pa.Table) -> dict[str, Any]:
    """Per file: rows in, kept, quarantined; and quarantined rows per reason, of one block of parsed rows
    (merged by :func:`merge_block_counts`; Arrow group-bys, no per-row Python)."""
    at = pa.compute.index_in(decision_keys(batch.column(S.REC_FILE), batch.column(S.REC_LINE)),
                             value_set=decision_keys(decisions.column(S.REC_FILE), decisions.column(S.REC_LINE)))
    reason = pa.compute.if_else(
        pa.compute.and_(pa.compute.equal(batch.column(S.REASON), ""), pa.compute.is_valid(at)),
        pa.compute.take(decisions.column(S.REASON), pa.compute.fill_null(at, 0)) if decisions.num_rows
        else pa.nulls(batch.num_rows, pa.string()), batch.column(S.REASON))
    t = pa.table({"f": batch.column(S.REC_FILE), "r": reason})
    files: dict[str, dict[str, int]] = {}
    by_reason: dict[str, int] = {}
    for row in t.group_by(["f", "r"]).aggregate([([], "count_all")]).to_pylist():
        f = files.setdefault(row["f"], {"rows_in": 0, "kept": 0, "quarantined": 0})
        f["rows_in"] += row["count_all"]
        if row["r"]:
            f["quarantined"] += row["count_all"]
            by_reason[row["r"]] = by_reason.get(row["r"], 0) + row["count_all"]
        else:
            f["kept"] += row["count_all"]
    return {"files": files, "by_reason": by_reason}


def merge_block_counts(parts: list[dict[str, Any]]) -> dict[str, Any]:
    files: dict[str, dict[str, int]] = {}
    by_reason: dict[str, int] = {}
    for p in parts:
        for name, c in p["files"].items():
            f = files.setdefault(name, {"rows_in": 0, "kept": 0, "quarantined": 0})
            for k in f:
                f[k] += c[k]
        for r, n in p["by_reason"].items():
            by_reason[r] = by_reason.get(r, 0) + n
    return {"files": files, "by_reason": by_reason}


# --------------------------------------------------------------------------------------------------
# Train / held-out overlap
# --------------------------------------------------------------------------------------------------

# A held-out row whose id or post is also a training row would measure memorisation, not summarisation
# (webis and custom files can hold the same post under both splits). Such rows leave the eval split.
OVERLAPS_TRAIN = "overlaps_train"
KEY_SCHEMA = pa.schema([pa.field(S.REC_FILE, pa.string()), pa.field(S.REC_LINE, pa.int64()),
                        pa.field(S.ID, pa.string()), pa.field("post_key", pa.string())])


def post_key(post: str) -> str:
    """What makes two posts "the same": equal after case-folding and collapsing whitespace (hashed, so
    the driver holds 16 bytes per training post, not the post)."""
    return hashlib.sha1(" ".join(post.casefold().split()).encode("utf-8", "surrogatepass")).hexdigest()[:32]


def row_keys(batch: pa.Table) -> pa.Table:
    """Valid parsed rows (no parse reason) -> (file, line, id, post key), :data:`KEY_SCHEMA`."""
    valid = batch.filter(pa.compute.equal(batch.column(S.REASON), ""))
    posts = [post_key(p) for p in valid.column(S.POST).to_pylist()]
    return pa.Table.from_arrays([valid.column(S.REC_FILE), valid.column(S.REC_LINE), valid.column(S.ID),
                                 pa.array(posts, pa.string())], schema=KEY_SCHEMA)


@dataclass
class TrainKeys:
    """The training rows' ids and post keys (:func:`post_key`), aligned: ``posts[i]`` is the post of
    training row ``ids[i]``. Arrow arrays, built by a task and broadcast (never per row on the driver)."""

    ids: pa.Array
    posts: pa.Array

    @classmethod
    def of(cls, keys: pa.Table) -> TrainKeys:
        keys = keys.combine_chunks()
        col = [keys.column(c).chunk(0) if keys.column(c).num_chunks else pa.array([], pa.string())
               for c in (S.ID, "post_key")]
        return cls(*col)

    @classmethod
    def empty(cls) -> TrainKeys:
        return cls(pa.array([], pa.string()), pa.array([], pa.string()))


def find_overlaps(keys: pa.Table, dups: pa.Table, train: TrainKeys) -> pa.Table:
    """Held-out rows (``keys`` of :func:`row_keys`) whose id or post is a training row's -> a
    :data:`DECISION_SCHEMA` table (``overlaps_train``, saying why). Rows already quarantined as
    duplicates (``dups``) keep that reason."""
    if keys.num_rows == 0:
        return DECISION_SCHEMA.empty_table()
    is_dup = pa.compute.is_in(decision_keys(keys.column(S.REC_FILE), keys.column(S.REC_LINE)),
                              value_set=decision_keys(dups.column(S.REC_FILE), dups.column(S.REC_LINE)))
    id_hit = pa.compute.is_in(keys.column(S.ID), value_set=train.ids)
    post_at = pa.compute.index_in(keys.column("post_key"), value_set=train.posts)
    hit = pa.compute.and_(pa.compute.invert(is_dup), pa.compute.or_(id_hit, pa.compute.is_valid(post_at)))
    k = keys.filter(hit)
    id_hit, post_at = id_hit.filter(hit), post_at.filter(hit)
    post_ids = pa.compute.take(train.ids, post_at) if len(train.ids) else pa.nulls(k.num_rows, pa.string())
    detail = pa.compute.if_else(
        id_hit, pa.compute.binary_join_element_wise("id '", k.column(S.ID), "' is also a training row", ""),
        pa.compute.binary_join_element_wise("its post is also the post of training row '", post_ids, "'", ""))
    return pa.Table.from_arrays([k.column(S.REC_FILE), k.column(S.REC_LINE),
                                 pa.array([OVERLAPS_TRAIN] * k.num_rows, pa.string()), detail],
                                schema=DECISION_SCHEMA)
