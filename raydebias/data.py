"""Readers for the public Reddit TL;DR layouts -> validated source rows + a quarantine table (SPEC §1).

Layouts (``data.layout``; ``auto`` detects per file from the first record's keys):

- ``carper``: CarperAI/openai_summarize_tldr, ``prompt`` = "SUBREDDIT: r/…\\nTITLE: …\\nPOST: …\\nTL;DR:",
  ``label`` = summary. No id column: the id is a content hash, so exact duplicate rows collide.
- ``webis``: webis/tldr-17, ``content`` (post), ``summary``, ``id``, ``subreddit`` (+ author, body, …).
- ``comparisons``: openai/summarize_from_feedback, ``info{id, post, title, subreddit}``,
  ``summaries[{text, policy, note}]``, ``choice``. One post appears in many comparisons: the human
  reference (policy ``ref``) is preferred, else the chosen summary; repeats become ``duplicate_id``.
- ``plain``: any JSONL/Parquet/CSV with ``post`` + ``summary`` (+ optional ``id``, ``subreddit``, ``title``).

Files: ``.jsonl``/``.ndjson``/``.json`` (JSON lines, or one JSON array), ``.parquet``, ``.csv``, each
optionally ``.gz``/``.bz2``/``.zst``. Every physical input record becomes exactly one row of either the
kept dataset or the quarantine (reasons in :data:`raydebias.schema.QUARANTINE_REASONS`); the counts are
checked, not assumed. Held-out rows that share an id or a post with a training row are quarantined as
``overlaps_train`` (``data.eval_overlap``; or the stage fails), so evaluation never scores training data.

The work is split so the Ray parts stay thin: :class:`RecordDatasource` streams files into raw records
(one per line / row, with file and line), :func:`parse_records` is a pure Arrow-batch function doing
parsing and validation (tested without Ray), and :func:`read_split` wires them with Ray Data
(``map_batches`` + a ``groupby`` on id for duplicates).
"""

from __future__ import annotations

import csv
import glob as globlib
import hashlib
import io
import json
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)

from raydebias import schema as S
from raydebias.config import DataConfig
from raydebias.errors import DataError  # noqa: F401  (re-exported)
from raydebias.prompts import parse_prompt

log = logging.getLogger(__name__)

LAYOUTS = ("carper", "webis", "comparisons", "plain")
SAMPLE_PREFIX = "sample:"
SAMPLES_DIR = Path(__file__).parent / "samples"
_COMPRESSED = (".gz", ".bz2", ".zst")
_JSON_EXT = (".jsonl", ".ndjson", ".json")
_EXTENSIONS = (*_JSON_EXT, ".parquet", ".csv")
_BLOCK_ROWS = 4096
_SURROGATE = re.compile("[\ud800-\udfff]")
_HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


# --------------------------------------------------------------------------------------------------
# Locating inputs
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HubSource:
    dataset_id: str
    split: str


def base_ext(path: str) -> str:
    name = path.lower()
    for c in _COMPRESSED:
        if name.endswith(c):
            name = name[: -len(c)]
    return os.path.splitext(name)[1]


def resolve_source(source: str, split: str = "train") -> list[str] | HubSource:
    """Turn ``data.source`` into a sorted list of files (local paths, or URIs for a source on an object
    store such as ``s3://bucket/tldr/``), or a :class:`HubSource`."""
    from raydebias.storage import is_uri

    if is_uri(source):
        return _files_in_storage(source)
    if source.startswith(SAMPLE_PREFIX):
        name = source[len(SAMPLE_PREFIX):].strip("/")
        root = SAMPLES_DIR / name
        if not root.exists():
            have = sorted(p.relative_to(SAMPLES_DIR).as_posix() for p in SAMPLES_DIR.glob("*/*") if p.is_dir())
            raise DataError(f"no shipped sample {source!r}; available: {', '.join(SAMPLE_PREFIX + h for h in have)}")
        return _files_under(root, source)
    expanded = os.path.expanduser(source)
    if any(ch in expanded for ch in "*?["):
        files = sorted(p for p in globlib.glob(expanded, recursive=True) if os.path.isfile(p))
        if not files:
            raise DataError(f"data source glob {source!r} matches no files")
        return [os.path.abspath(p) for p in files]
    if os.path.isdir(expanded):
        return _files_under(Path(expanded), source)
    if os.path.isfile(expanded):
        if base_ext(expanded) not in _EXTENSIONS:
            raise DataError(f"cannot read {source!r}: unsupported file type (use one of {', '.join(_EXTENSIONS)})")
        return [os.path.abspath(expanded)]
    if source.startswith((".", "/", "~")) or base_ext(source) in _EXTENSIONS:
        raise DataError(f"data source {source!r} does not exist")
    if _HF_ID.match(source):
        return HubSource(source, split)
    raise DataError(f"data source {source!r} is neither an existing path nor a Hugging Face dataset id")


def _files_in_storage(source: str) -> list[str]:
    """The readable files at a filesystem URI: the file itself, or every one under the prefix (recursive,
    ``.``/``_``-prefixed names skipped), as URIs that :func:`open_input` opens."""
    import pyarrow.fs as pafs

    from raydebias.storage import StorageError, StoragePath

    try:
        root = StoragePath.of(source)
        kind = root.fs.get_file_info(root.path).type
        if kind == pafs.FileType.File:
            infos = [root.fs.get_file_info(root.path)]
        elif kind == pafs.FileType.Directory:
            infos = root.fs.get_file_info(pafs.FileSelector(root.path, recursive=True))
        else:
            raise DataError(f"data source {source!r} does not exist (URIs name a file or a prefix; no globs)")
    except (StorageError, OSError) as e:
        raise DataError(f"cannot read data source {source!r}: {e}") from e
    if kind == pafs.FileType.File and base_ext(root.path) not in _EXTENSIONS:
        raise DataError(f"cannot read {source!r}: unsupported file type (use one of {', '.join(_EXTENSIONS)})")
    files = sorted(root.at(i.path).uri for i in infos if i.type == pafs.FileType.File
                   and base_ext(i.base_name) in _EXTENSIONS and not i.base_name.startswith((".", "_")))
    if not files:
        raise DataError(f"data source {source!r} holds no {'/'.join(_EXTENSIONS)} files")
    return files


def _files_under(root: Path, label: str) -> list[str]:
    files = sorted(
        str(p.resolve()) for p in root.rglob("*")
        if p.is_file() and base_ext(p.name) in _EXTENSIONS and not p.name.startswith((".", "_"))
    )
    if not files:
        raise DataError(f"data source {label!r} ({root}) holds no {'/'.join(_EXTENSIONS)} files")
    return files


# --------------------------------------------------------------------------------------------------
# Layout detection
# --------------------------------------------------------------------------------------------------


def layout_from_keys(keys: set[str] | list[str]) -> str | None:
    keys = set(keys)
    if {"prompt", "label"} <= keys:
        return "carper"
    if {"info", "summaries"} <= keys:
        return "comparisons"
    if {"content", "summary"} <= keys:
        return "webis"
    if {"post", "summary"} <= keys:
        return "plain"
    return None


def open_input(path: str):
    """A binary input stream for a local path or pyarrow filesystem URI; .gz/.bz2/.zst decompressed."""
    import pyarrow.fs as pafs

    fs, p = pafs.FileSystem.from_uri(path) if "://" in path else (pafs.LocalFileSystem(), path)
    return fs.open_input_stream(p, compression="detect")  # .gz/.bz2/.zst by extension


def detect_layout(path: str, peek_records: int = 50) -> str:
    """Layout of one file from its first records' keys; raises :class:`DataError` naming the file."""
    ext = base_ext(path)
    try:
        if ext == ".parquet":
            import pyarrow.parquet as pq

            keys = pq.read_schema(path).names
            layout = layout_from_keys(keys)
            seen = f"columns {keys}"
        elif ext == ".csv":
            with open_input(path) as f:
                head = f.read(1 << 16).decode("utf-8", "surrogateescape")
            keys = next(csv.reader(io.StringIO(head)), [])
            layout = layout_from_keys(keys)
            seen = f"CSV header {keys}"
        else:
            layout, seen = None, "no JSON object in the first records"
            with open_input(path) as f:
                head = f.read(1 << 20)
            text = head.decode("utf-8", "surrogateescape").lstrip()
            candidates: list[Any] = []
            if text.startswith("["):
                try:
                    candidates = json.loads(text)[:peek_records]
                except json.JSONDecodeError:
                    candidates = []  # a truncated large array: fall back to reading it whole at run time
                    decoder = json.JSONDecoder()
                    pos = 1
                    while len(candidates) < peek_records:
                        while pos < len(text) and text[pos] in " \r\n\t,":
                            pos += 1
                        try:
                            obj, pos = decoder.raw_decode(text, pos)
                        except json.JSONDecodeError:
                            break
                        candidates.append(obj)
            else:
                for line in text.splitlines()[:peek_records]:
                    try:
                        candidates.append(json.loads(line))
                    except json.JSONDecodeError:
                        continue
            for rec in candidates:
                if isinstance(rec, dict):
                    seen = f"keys {sorted(rec)}"
                    layout = layout_from_keys(rec)
                    if layout:
                        break
    except (OSError, pa.ArrowException, EOFError) as e:
        raise DataError(f"cannot read {path}: {type(e).__name__}: {e}") from e
    if layout is None:
        raise DataError(
            f"cannot detect the layout of {path}: {seen}. Expected prompt+label (carper), content+summary "
            f"(webis), info+summaries (comparisons) or post+summary (plain); or set data.layout."
        )
    return layout


# --------------------------------------------------------------------------------------------------
# Streaming raw records (Ray Data datasource)
# --------------------------------------------------------------------------------------------------


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (bytes, bytearray)):
        return bytes(obj).decode("utf-8", "surrogateescape")
    return str(obj)


def _dumps(record: Any) -> bytes:
    # ensure_ascii keeps lone surrogates representable (as \udcxx escapes); they are caught as
    # invalid_unicode when the record is parsed back.
    return json.dumps(record, default=_json_default, ensure_ascii=True).encode("ascii")


def iter_raw_records(f: Any, path: str) -> Iterator[tuple[int, bytes]]:
    """(line number, raw JSON bytes) for every record of one file, blank lines included.

    JSON lines stream in 4 MiB chunks; a ``.json`` file starting with ``[`` is one array; CSV rows
    and Parquet rows are re-encoded as JSON objects so that one parser handles every format.
    """
    ext = base_ext(path)
    if ext == ".parquet":
        import pyarrow.parquet as pq

        line = 0
        for batch in pq.ParquetFile(f).iter_batches(batch_size=_BLOCK_ROWS):
            for rec in batch.to_pylist():
                line += 1
                yield line, _dumps(rec)
        return
    if ext == ".csv":
        text = f.read().decode("utf-8", "surrogateescape")
        reader = csv.DictReader(io.StringIO(text, newline=""))
        for i, rec in enumerate(reader, start=1):
            if None in rec:  # more cells than header columns
                rec["__extra_cells__"] = rec.pop(None)
            yield i, _dumps(rec)
        return
    first = f.read(1 << 22)
    if first.lstrip()[:1] == b"[":
        data = first + f.read()
        try:
            items = json.loads(data.decode("utf-8", "surrogateescape"))
        except json.JSONDecodeError as e:
            raise DataError(f"{path} starts like a JSON array but is not valid JSON: {e}") from e
        for i, rec in enumerate(items, start=1):
            yield i, _dumps(rec)
        return
    pending, line, chunk = b"", 0, first
    while chunk:
        parts = (pending + chunk).split(b"\n")
        pending = parts.pop()
        for part in parts:
            line += 1
            yield line, part.rstrip(b"\r")
        chunk = f.read(1 << 22)
    if pending.strip():
        yield line + 1, pending.rstrip(b"\r")


def _raw_table(path: str, rows: list[tuple[int, bytes]]) -> pa.Table:
    return pa.Table.from_arrays(
        [pa.array([path] * len(rows), pa.string()), pa.array([r[0] for r in rows], pa.int64()),
         pa.array([r[1] for r in rows], pa.binary())],
        schema=S.RAW_RECORD_SCHEMA,
    )


def _make_datasource(paths: list[str]):
    # Defined lazily so that importing raydebias.data does not import Ray.
    from ray.data.datasource import FileBasedDatasource

    # Ray hands _read_stream the path inside the filesystem (s3://b/k -> b/k); records name their file
    # as the source listed it (the URI), which is also how layouts and counts are keyed.
    names = {(p.split("://", 1)[1].split("?", 1)[0] if "://" in p else p): p for p in paths}

    def name_of(path: str) -> str:
        if path in names:
            return names[path]
        return next((n for k, n in names.items() if k.endswith(path)), path)  # e.g. hdfs://host:port/p -> /p

    class RecordDatasource(FileBasedDatasource):
        """Streams TL;DR files as (file, line, raw JSON) records; one read task per file."""

        def _open_input_source(self, filesystem, path, **open_args):
            if base_ext(path) == ".parquet":  # needs random access
                return filesystem.open_input_file(path)
            return super()._open_input_source(filesystem, path, **open_args)

        def _read_stream(self, f, path):
            path = name_of(path)
            rows: list[tuple[int, bytes]] = []
            try:
                for rec in iter_raw_records(f, path):
                    rows.append(rec)
                    if len(rows) >= _BLOCK_ROWS:
                        yield _raw_table(path, rows)
                        rows = []
            except DataError:
                raise
            except Exception as e:  # corrupt compression, truncated Parquet, I/O errors
                raise DataError(f"cannot read {path}: {type(e).__name__}: {e}") from e
            if rows:
                yield _raw_table(path, rows)

    return RecordDatasource(paths)


# --------------------------------------------------------------------------------------------------
# Parsing and validation (pure: Arrow batch in, Arrow batch out)
# --------------------------------------------------------------------------------------------------

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


class _Reject(Exception):
    def __init__(self, reason: str, detail: str, rid: str | None = None):
        super().__init__(reason)
        self.reason, self.detail, self.rid = reason, detail, rid


def _hash_id(prefix: str, *parts: str) -> str:
    h = hashlib.sha1("\x00".join(parts).encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{prefix}-{h}"


def _text(rec: dict, key: str, label: str | None = None, required: bool = True) -> str | None:
    label = label or key
    if key not in rec or rec[key] is None:
        if required:
            raise _Reject("missing_field", f"field {label!r} is missing")
        return None
    value = rec[key]
    if not isinstance(value, str):
        raise _Reject("non_string_field", f"field {label!r} is {type(value).__name__}, not a string")
    if _SURROGATE.search(value):
        raise _Reject("invalid_unicode", f"field {label!r} holds bytes that are not valid UTF-8")
    value = value.strip()
    if required and not value:
        raise _Reject("empty_field", f"field {label!r} is empty")
    return value or None


def _id(rec: dict, key: str, label: str | None = None) -> str | None:
    value = rec.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise _Reject("non_string_field", f"field {label or key!r} is {type(value).__name__}, not a string")
    value = str(value).strip()
    if _SURROGATE.search(value):
        raise _Reject("invalid_unicode", f"field {label or key!r} holds bytes that are not valid UTF-8")
    return value or None


def record_to_row(rec: Any, layout: str) -> tuple[dict[str, Any], int]:
    """One parsed record -> (source row, rank). Raises _Reject with a quarantine reason."""
    if not isinstance(rec, dict):
        raise _Reject("not_an_object", f"expected a JSON object, got {type(rec).__name__}")
    rank = 0
    if layout == "carper":
        prompt = _text(rec, "prompt")
        summary = _text(rec, "label")
        fields = parse_prompt(prompt)
        if fields is None:
            raise _Reject("unparseable_prompt", "prompt has no 'POST:' section")
        if not fields["post"]:
            raise _Reject("empty_field", "field 'post' (inside prompt) is empty")
        row = {S.ID: _hash_id("carper", prompt, summary), S.POST: fields["post"], S.SUMMARY: summary,
               S.SUBREDDIT: fields["subreddit"] or None, S.TITLE: fields["title"] or None}
    elif layout == "webis":
        post = _text(rec, "content")
        summary = _text(rec, "summary")
        rid = _id(rec, "id") or _hash_id("webis", post, summary)
        row = {S.ID: rid, S.POST: post, S.SUMMARY: summary,
               S.SUBREDDIT: _text(rec, "subreddit", required=False), S.TITLE: _text(rec, "title", required=False)}
    elif layout == "comparisons":
        info = rec.get("info")
        if not isinstance(info, dict):
            raise _Reject("missing_field" if info is None else "non_string_field",
                          "field 'info' is missing" if info is None else "field 'info' is not an object")
        post = _text(info, "post", "info.post")
        summaries = rec.get("summaries")
        if not isinstance(summaries, list) or not summaries:
            raise _Reject("missing_field", "field 'summaries' is missing or empty")
        pick, rank = None, 2
        for i, s in enumerate(summaries):
            if isinstance(s, dict) and s.get("policy") == "ref":
                pick, rank = i, 0
                break
        if pick is None:
            choice = rec.get("choice")
            ok = isinstance(choice, int) and not isinstance(choice, bool) and 0 <= choice < len(summaries)
            pick, rank = (choice, 1) if ok else (0, 2)
        chosen = summaries[pick]
        if not isinstance(chosen, dict):
            raise _Reject("non_string_field", f"summaries[{pick}] is not an object")
        summary = _text(chosen, "text", f"summaries[{pick}].text")
        rid = _id(info, "id", "info.id") or _hash_id("cmp", post)
        row = {S.ID: rid, S.POST: post, S.SUMMARY: summary,
               S.SUBREDDIT: _text(info, "subreddit", "info.subreddit", required=False),
               S.TITLE: _text(info, "title", "info.title", required=False)}
    elif layout == "plain":
        post = _text(rec, "post")
        summary = _text(rec, "summary")
        row = {S.ID: _id(rec, "id") or _hash_id("row", post, summary), S.POST: post, S.SUMMARY: summary,
               S.SUBREDDIT: _text(rec, "subreddit", required=False), S.TITLE: _text(rec, "title", required=False)}
    else:
        raise ValueError(f"unknown layout {layout!r}")
    if row[S.SUBREDDIT] and row[S.SUBREDDIT].startswith("r/"):
        row[S.SUBREDDIT] = row[S.SUBREDDIT][2:]
    return row, rank


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
                raise _Reject("blank_line", "empty line")
            try:
                rec = json.loads(raw.decode("utf-8", "surrogateescape"))
            except json.JSONDecodeError as e:
                raise _Reject("invalid_json", f"not valid JSON: {e.msg} at column {e.colno}") from None
            row, rank = record_to_row(rec, layouts[path])
            if len(row[S.POST]) > max_post_chars:
                raise _Reject("post_too_long", f"post has {len(row[S.POST])} chars > data.max_post_chars={max_post_chars}",
                              row[S.ID])
        except _Reject as r:
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


# --------------------------------------------------------------------------------------------------
# Ray Data wiring
# --------------------------------------------------------------------------------------------------


@dataclass
class SplitResult:
    """The validated rows of one split (a Ray dataset each) and the counts that must add up."""

    kept: Any  # ray.data.Dataset of SOURCE_SCHEMA
    quarantine: Any  # ray.data.Dataset of QUARANTINE_SCHEMA
    stats: dict[str, Any]
    keys: pa.Table | None = None  # KEY_SCHEMA of the valid rows, when asked for (the training split's)


def _read_hub(src: HubSource) -> tuple[Any, dict[str, str]]:
    import ray.data

    try:
        import datasets

        hf = datasets.load_dataset(src.dataset_id, split=src.split)
    except Exception as e:  # datasets raises many types (ConnectionError, FileNotFoundError, ...)
        offline = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("HF_DATASETS_OFFLINE")
        why = "HF_HUB_OFFLINE is set" if offline else "the hub is unreachable from here or the id is wrong"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(
            f"cannot load Hugging Face dataset {src.dataset_id!r} (split {src.split!r}): {why} ({first}). "
            f"Download it on a machine with hub access (e.g. the Parquet files of the dataset) and set "
            f"data.source to the local path, or use data.source=sample:tldr/train for the shipped sample."
        ) from None
    name = f"hf://{src.dataset_id}@{src.split}"
    layout = layout_from_keys(hf.column_names)
    if layout is None:
        raise DataError(f"cannot detect the layout of {name}: columns {hf.column_names}; set data.layout")
    hf = hf.add_column("__line__", list(range(1, len(hf) + 1)))

    def to_raw(batch: pa.Table) -> pa.Table:
        recs = batch.drop_columns(["__line__"]).to_pylist()
        return _raw_table(name, list(zip(batch.column("__line__").to_pylist(), map(_dumps, recs), strict=True)))

    return ray.data.from_huggingface(hf).map_batches(to_raw, batch_format="pyarrow"), {name: layout}


def read_split(source: str, hf_split: str, cfg: DataConfig, split_name: str, *, want_keys: bool = False,
               train: TrainKeys | None = None) -> SplitResult:
    """Read, parse, validate and de-duplicate one split.

    The parsed rows are materialised once (kept rows, quarantine and counts all derive from them).
    Duplicate ids are found on the driver from a projection of the small metadata columns: one light
    pass instead of a shuffle, which on small clusters costs several times more (bench/data.py).
    ``want_keys``: also return the valid rows' ids and post keys (:func:`row_keys`). ``train``: the
    training split's keys; rows sharing an id or post with it are quarantined as ``overlaps_train``
    (``data.eval_overlap=drop``, with a warning) or fail the stage (``error``).
    """
    import ray.data

    resolved = resolve_source(source, hf_split)
    if isinstance(resolved, HubSource):
        raw, layouts = _read_hub(resolved)
    else:
        layouts = {p: (cfg.layout if cfg.layout != "auto" else detect_layout(p)) for p in resolved}
        # One read task per file, fused with parsing: letting Ray split reads into ~200 small blocks
        # cost 1.8x wall time here (bench/data.py). Parallelism is therefore the number of files;
        # shard a single huge file to parse it on several cores.
        raw = ray.data.read_datasource(_make_datasource(resolved), override_num_blocks=len(resolved))
    for p, lay in layouts.items():
        log.info("data[%s]: %s -> layout %s", split_name, p, lay)
    if cfg.limit is not None:
        raw = raw.limit(cfg.limit)

    try:
        parsed = raw.map_batches(
            parse_records, batch_format="pyarrow", fn_kwargs={"layouts": layouts, "max_post_chars": cfg.max_post_chars}
        ).materialize()
    except Exception as e:
        cause = _data_error_in(e)
        if cause is None:
            raise
        raise DataError(str(cause)) from None
    batches = list(parsed.select_columns(META_COLUMNS).iter_batches(batch_format="pyarrow", batch_size=None))
    meta = pa.concat_tables(batches) if batches else pa.schema(
        [PARSED_SCHEMA.field(c) for c in META_COLUMNS]).empty_table()
    dups = find_duplicates(meta)
    keys, overlaps = None, {}
    if want_keys or train is not None:
        kb = list(parsed.map_batches(row_keys, batch_format="pyarrow").iter_batches(batch_format="pyarrow",
                                                                                    batch_size=None))
        keys = pa.concat_tables(kb).cast(KEY_SCHEMA) if kb else KEY_SCHEMA.empty_table()
    if train is not None:
        overlaps = find_overlaps(keys, dups, train)
        if overlaps and cfg.eval_overlap == "error":
            (f, ln), why = next(iter(sorted(overlaps.items())))
            raise DataError(f"data[{split_name}]: {len(overlaps)} held-out rows overlap the training rows (first: "
                            f"{f}:{ln}, {why}); remove them from {source} or set data.eval_overlap=drop to "
                            f"quarantine them as {OVERLAPS_TRAIN}")
        if overlaps:
            log.warning("data[%s]: %d held-out rows share an id or post with the training rows; quarantined as "
                        "%s (quarantine/data)", split_name, len(overlaps), OVERLAPS_TRAIN)
    stats = count_rows(meta, dups, layouts, source, overlaps)
    kept = parsed.map_batches(split_parsed, batch_format="pyarrow",
                              fn_kwargs={"dups": dups, "keep": True, "overlaps": overlaps})
    quarantine = parsed.map_batches(split_parsed, batch_format="pyarrow", fn_kwargs={
        "dups": dups, "keep": False, "split_name": split_name, "overlaps": overlaps})
    return SplitResult(kept=kept, quarantine=quarantine, stats=stats, keys=keys if want_keys else None)


def _data_error_in(exc: BaseException) -> DataError | None:
    """The DataError raised inside a Ray task, if that is what ``exc`` (a RayTaskError chain) carries."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, DataError):
            return exc
        cause = getattr(exc, "cause", None)
        exc = cause if isinstance(cause, BaseException) else (exc.__cause__ or exc.__context__)
    return None


def count_rows(meta: pa.Table, dups: dict[tuple[str, int], str], layouts: dict[str, str], source: str,
               overlaps: dict[tuple[str, int], str] | None = None) -> dict[str, Any]:
    """Counts per file and reason; checks rows in = kept + quarantined (per file and in total)."""
    overlaps = overlaps or {}
    files: dict[str, dict[str, Any]] = {
        p: {"layout": lay, "rows_in": 0, "kept": 0, "quarantined": 0} for p, lay in layouts.items()
    }
    by_reason: dict[str, int] = {}
    for path, line, reason in zip(meta.column(S.REC_FILE).to_pylist(), meta.column(S.REC_LINE).to_pylist(),
                                  meta.column(S.REASON).to_pylist(), strict=True):
        if not reason and (path, line) in dups:
            reason = "duplicate_id"
        elif not reason and (path, line) in overlaps:
            reason = OVERLAPS_TRAIN
        f = files.setdefault(path, {"layout": layouts.get(path), "rows_in": 0, "kept": 0, "quarantined": 0})
        f["rows_in"] += 1
        if reason:
            f["quarantined"] += 1
            by_reason[reason] = by_reason.get(reason, 0) + 1
        else:
            f["kept"] += 1
    rows_in = meta.num_rows
    kept = sum(f["kept"] for f in files.values())
    quarantined = sum(by_reason.values())
    if kept + quarantined != rows_in:  # an invariant of this module: a bug if it fires
        raise AssertionError(f"rows in {rows_in} != kept {kept} + quarantined {quarantined}")
    return {"source": source, "rows_in": rows_in, "kept": kept, "quarantined": quarantined,
            "quarantined_by_reason": dict(sorted(by_reason.items())), "files": files}


def run_data_stage(cfg: Any, out: Any) -> dict[str, Any]:
    """The ``data`` stage: read the training (and held-out) split, write Parquet + quarantine + stats.

    ``cfg`` is the full :class:`raydebias.config.Config`; ``out`` a :class:`raydebias.outputs.RunDir`.
    """
    splits = [("train", cfg.data.source, cfg.data.split)]
    if cfg.data.eval_source:
        splits.append(("eval", cfg.data.eval_source, cfg.data.eval_split))
    stats: dict[str, Any] = {}
    quarantines = []
    train: TrainKeys | None = None
    for name, source, hf_split in splits:
        # the held-out split is read after the training split, against its ids and posts (data.eval_overlap)
        res = read_split(source, hf_split, cfg.data, name, want_keys=name == "train" and len(splits) > 1,
                         train=train)
        if res.keys is not None:
            train = TrainKeys.of(res.keys)
        out.write_dataset(res.kept, out.sources_dir(name))
        quarantines.append(res.quarantine)
        stats[name] = res.stats
        log.info("data[%s]: %d rows in = %d kept + %d quarantined %s", name, res.stats["rows_in"],
                 res.stats["kept"], res.stats["quarantined"], res.stats["quarantined_by_reason"] or "")
    q = quarantines[0].union(*quarantines[1:]) if len(quarantines) > 1 else quarantines[0]
    out.write_dataset(q, out.quarantine_dir("data"), schema=S.QUARANTINE_SCHEMA)
    out.update_stats("data", stats)
    return stats
