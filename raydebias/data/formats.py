"""Input formats: open a (compressed) file and stream its records as raw JSON, whatever the format.

Files: ``.jsonl``/``.ndjson``/``.json`` (JSON lines, or one JSON array), ``.parquet``, ``.csv``, each
optionally ``.gz``/``.bz2``/``.zst``. CSV and Parquet rows are re-encoded as JSON objects so that one
parser (:func:`raydebias.data.validate.parse_records`) handles every format. :func:`make_datasource`
is the Ray Data datasource that streams files as (file, line, raw JSON) records.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from raydebias import schema as S
from raydebias.errors import DataError

COMPRESSED = (".gz", ".bz2", ".zst")
JSON_EXT = (".jsonl", ".ndjson", ".json")
EXTENSIONS = (*JSON_EXT, ".parquet", ".csv")
BLOCK_ROWS = 4096


def base_ext(path: str) -> str:
    name = path.lower()
    for c in COMPRESSED:
        if name.endswith(c):
            name = name[: -len(c)]
    return os.path.splitext(name)[1]


def open_input(path: str):
    """A binary input stream for a local path or pyarrow filesystem URI; .gz/.bz2/.zst decompressed."""
    import pyarrow.fs as pafs

    fs, p = pafs.FileSystem.from_uri(path) if "://" in path else (pafs.LocalFileSystem(), path)
    return fs.open_input_stream(p, compression="detect")  # .gz/.bz2/.zst by extension


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (bytes, bytearray)):
        return bytes(obj).decode("utf-8", "surrogateescape")
    return str(obj)


def dumps(record: Any) -> bytes:
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
        for batch in pq.ParquetFile(f).iter_batches(batch_size=BLOCK_ROWS):
            for rec in batch.to_pylist():
                line += 1
                yield line, dumps(rec)
        return
    if ext == ".csv":
        text = f.read().decode("utf-8", "surrogateescape")
        reader = csv.DictReader(io.StringIO(text, newline=""))
        for i, rec in enumerate(reader, start=1):
            if None in rec:  # more cells than header columns
                rec["__extra_cells__"] = rec.pop(None)
            yield i, dumps(rec)
        return
    first = f.read(1 << 22)
    if first.lstrip()[:1] == b"[":
        data = first + f.read()
        try:
            items = json.loads(data.decode("utf-8", "surrogateescape"))
        except json.JSONDecodeError as e:
            raise DataError(f"{path} starts like a JSON array but is not valid JSON: {e}") from e
        for i, rec in enumerate(items, start=1):
            yield i, dumps(rec)
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


def raw_table(path: str, rows: list[tuple[int, bytes]]) -> pa.Table:
    return pa.Table.from_arrays(
        [pa.array([path] * len(rows), pa.string()), pa.array([r[0] for r in rows], pa.int64()),
         pa.array([r[1] for r in rows], pa.binary())],
        schema=S.RAW_RECORD_SCHEMA,
    )


def make_datasource(paths: list[str]):
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
                    if len(rows) >= BLOCK_ROWS:
                        yield raw_table(path, rows)
                        rows = []
            except DataError:
                raise
            except Exception as e:  # corrupt compression, truncated Parquet, I/O errors
                raise DataError(f"cannot read {path}: {type(e).__name__}: {e}") from e
            if rows:
                yield raw_table(path, rows)

    return RecordDatasource(paths)
