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


def find_duplicates(meta: pa.Table) -> dict[tuple[str, int], str]:
    """Valid rows sharing an id -> {(file, line): "file:line of the kept row"} for all but the best.

    The best row has the lowest (rank, file, line): deterministic, whatever order blocks arrive in.
    ``meta`` holds only :data:`META_COLUMNS`, so this runs on the driver even for millions of rows.
    """
    valid = meta.filter(pa.compute.equal(meta.column(S.REASON), ""))
    if valid.num_rows == 0:
        return {}
    valid = valid.sort_by([(S.ID, "ascending"), (S.REC_RANK, "ascending"), (S.REC_FILE, "ascending"),
                           (S.REC_LINE, "ascending")])
    ids = valid.column(S.ID).to_pylist()
    files = valid.column(S.REC_FILE).to_pylist()
    lines = valid.column(S.REC_LINE).to_pylist()
    dups: dict[tuple[str, int], str] = {}
    kept_at = ""
    for i, rid in enumerate(ids):
        if i and rid == ids[i - 1]:
            dups[(files[i], lines[i])] = kept_at
        else:
            kept_at = f"{files[i]}:{lines[i]}"
    return dups


def split_parsed(batch: pa.Table, dups: dict[tuple[str, int], str], keep: bool, split_name: str = "",
                 overlaps: dict[tuple[str, int], str] | None = None) -> pa.Table:
    """Parsed rows -> the kept source rows (``keep=True``) or the quarantine rows (``keep=False``).
    ``dups`` and ``overlaps`` ({(file, line): detail}) name valid rows quarantined as ``duplicate_id`` /
    ``overlaps_train``."""
    overlaps = overlaps or {}
    files = batch.column(S.REC_FILE).to_pylist()
    lines = batch.column(S.REC_LINE).to_pylist()
    reasons = batch.column(S.REASON).to_pylist()
    is_dup = [(f, ln) in dups or (f, ln) in overlaps for f, ln in zip(files, lines, strict=True)]
    if keep:
        mask = pa.array([r == "" and not d for r, d in zip(reasons, is_dup, strict=True)])
        return batch.filter(mask).select(list(S.SOURCE_COLUMNS)).cast(S.SOURCE_SCHEMA)
    mask = [r != "" or d for r, d in zip(reasons, is_dup, strict=True)]
    q = batch.filter(pa.array(mask))
    qfiles, qlines = q.column(S.REC_FILE).to_pylist(), q.column(S.REC_LINE).to_pylist()
    reason, detail, raw = q.column(S.REASON).to_pylist(), q.column(S.DETAIL).to_pylist(), q.column(S.RAW).to_pylist()
    ids = q.column(S.ID).to_pylist()
    for i, key in enumerate(zip(qfiles, qlines, strict=True)):
        if reason[i] or (key not in dups and key not in overlaps):
            continue
        if key in dups:
            reason[i], detail[i] = "duplicate_id", f"id {ids[i]!r} already kept from {dups[key]}"
        else:
            reason[i], detail[i] = OVERLAPS_TRAIN, overlaps[key]
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
    """The training rows' ids and post keys (:func:`post_key`), each mapped to a training id to name."""

    ids: set[str]
    posts: dict[str, str]

    @classmethod
    def of(cls, keys: pa.Table) -> TrainKeys:
        ids = keys.column(S.ID).to_pylist()
        return cls(set(ids), dict(zip(keys.column("post_key").to_pylist(), ids, strict=True)))


def find_overlaps(keys: pa.Table, dups: dict[tuple[str, int], str], train: TrainKeys) -> dict[tuple[str, int], str]:
    """Held-out rows (``keys`` of :func:`row_keys`) whose id or post is a training row's ->
    {(file, line): why}. Rows already quarantined as duplicates keep that reason."""
    out: dict[tuple[str, int], str] = {}
    for f, ln, rid, pk in zip(*(keys.column(c).to_pylist() for c in KEY_SCHEMA.names), strict=True):
        if (f, ln) in dups:
            continue
        if rid in train.ids:
            out[(f, ln)] = f"id {rid!r} is also a training row"
        elif pk in train.posts:
            out[(f, ln)] = f"its post is also the post of training row {train.posts[pk]!r}"
    return out
