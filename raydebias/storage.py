"""Where outputs live: a local directory or any pyarrow filesystem URI (s3://, gs://, abfs://, hdfs://).

:class:`StoragePath` is a path on a ``pyarrow.fs.FileSystem`` with the slice of ``pathlib.Path``'s API
the stages use (``/``, ``name``, ``glob``, ``read_text``, ``write_text``, ...), plus Parquet helpers and
the pieces Ray needs (``path`` + ``fs`` for Ray Data reads/writes and Ray Train/Tune storage). Every
stage goes through it, local runs included, so the object-store path is the code the tests run.

Writes, and what a kill leaves behind:

* single files (text, Parquet parts) are written whole: locally to a temporary sibling, then renamed;
  on an object store by one PUT (an object appears complete or not at all);
* directories replaced as a whole (the data stage's Parquet, bookkeeping tables, the exported model,
  Ray Data writes) are committed by a ``_SUCCESS`` marker written last (:meth:`StoragePath.replacing`);
  readers ask :attr:`StoragePath.complete`. Locally the directory is also renamed into place
  atomically; object stores have no directory rename, so there the old content is invalidated
  (marker first), replaced, and marked again. ``_``- and ``.``-prefixed names are invisible to
  Parquet readers.

Credentials and endpoints come from where the filesystem's SDK reads them (AWS_* environment
variables, instance profiles, ``AWS_ENDPOINT_URL``, ...) or from the URI's query string
(``s3://bucket/run?region=us-west-2``), never from configs.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import os
import posixpath
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raydebias.errors import ConfigError, StorageError  # noqa: F401  (StorageError: re-exported)

MARKER = "_SUCCESS"
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_uri(where: Any) -> bool:
    """``scheme://...`` other than ``file://`` (a local path)."""
    return isinstance(where, str) and bool(_URI.match(where)) and not where.lower().startswith("file://")


class StoragePath:
    __slots__ = ("fs", "path", "scheme", "query")

    def __init__(self, fs: pafs.FileSystem, path: str, scheme: str = "", query: str = ""):
        self.fs = fs
        self.path = path.rstrip("/") or "/"
        self.scheme = scheme
        self.query = query

    @classmethod
    def of(cls, where: str | os.PathLike | StoragePath) -> StoragePath:
        """A local path (``~`` expanded, made absolute), ``file://`` path, or a filesystem URI."""
        if isinstance(where, StoragePath):
            return where
        s = os.fspath(where)
        if not is_uri(s):
            local = s[len("file://"):] if s.lower().startswith("file://") else s
            return cls(pafs.LocalFileSystem(), str(Path(local).expanduser().resolve()))
        scheme = s.split("://", 1)[0].lower()
        try:
            fs, path = pafs.FileSystem.from_uri(s)
        except (pa.ArrowException, OSError, ValueError) as e:
            raise StorageError(f"cannot open storage {s!r}: {e}. Local directories and pyarrow filesystem URIs "
                               "(s3://bucket/prefix, gs://..., abfs://..., hdfs://...) are supported; credentials "
                               "come from the environment (e.g. AWS_* variables or an instance profile)") from e
        return cls(fs, path, scheme, s.split("?", 1)[1] if "?" in s else "")

    # --- names ----------------------------------------------------------------------------------
    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    @property
    def uri(self) -> str:
        """What a user would pass to name this place again: the path, or ``scheme://path[?query]``."""
        if self.is_local:
            return self.path
        return f"{self.scheme}://{self.path}" + (f"?{self.query}" if self.query else "")

    def at(self, path: str) -> StoragePath:
        """Another path on the same filesystem (e.g. a checkpoint path Ray reports)."""
        return StoragePath(self.fs, path, self.scheme, self.query)

    def __truediv__(self, name: str) -> StoragePath:
        return self.at(posixpath.join(self.path, str(name)))

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)

    @property
    def parent(self) -> StoragePath:
        return self.at(posixpath.dirname(self.path))

    def with_name(self, name: str) -> StoragePath:
        return self.parent / name

    def __str__(self) -> str:
        return self.uri

    def __repr__(self) -> str:
        return f"StoragePath({self.uri!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StoragePath) and (self.uri, self.fs.type_name) == (other.uri, other.fs.type_name)

    def __hash__(self) -> int:
        return hash((self.uri, self.fs.type_name))

    def __fspath__(self) -> str:
        if not self.is_local:
            raise TypeError(f"{self.uri} is on {self.fs.type_name}, not a local path: use its StoragePath methods")
        return self.path

    def local(self) -> Path:
        return Path(os.fspath(self))

    def check_writable(self) -> None:
        """Fail early, with a clear error, when this place cannot be written (no bucket, no credentials,
        no permission): a probe file is written and deleted."""
        probe = self / f".raydebias-probe-{uuid.uuid4().hex[:8]}"
        try:
            probe.write_bytes(b"")
            probe.unlink(missing_ok=True)
        except (OSError, pa.ArrowException) as e:
            raise StorageError(f"cannot write to {self.uri}: {e}. Check that the bucket exists and that this "
                               "process has credentials for it (environment, instance profile)") from e

    def ray_storage(self) -> tuple[str, pafs.FileSystem | None]:
        """(storage_path, storage_filesystem) for Ray Train/Tune RunConfig and Tuner.restore."""
        return (self.path, None) if self.is_local else (self.path, self.fs)

    # --- queries --------------------------------------------------------------------------------
    def _type(self) -> pafs.FileType:
        return self.fs.get_file_info(self.path).type

    def exists(self) -> bool:
        return self._type() != pafs.FileType.NotFound

    def is_dir(self) -> bool:
        return self._type() == pafs.FileType.Directory

    def is_file(self) -> bool:
        return self._type() == pafs.FileType.File

    @property
    def complete(self) -> bool:
        """A directory committed by :meth:`replacing` (its marker is there)."""
        return (self / MARKER).is_file()

    def iterdir(self) -> list[StoragePath]:
        """The entries directly under this directory, sorted by name; [] when it does not exist."""
        infos = self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))
        return sorted((self.at(i.path) for i in infos), key=lambda p: p.name)

    def glob(self, pattern: str) -> list[StoragePath]:
        """Entries matching ``pattern`` (``fnmatch`` per ``/``-separated level, no ``**``), sorted."""
        level, _, rest = pattern.partition("/")
        hits = [p for p in self.iterdir() if fnmatch.fnmatchcase(p.name, level)]
        if not rest:
            return hits
        return [q for p in hits if p.is_dir() for q in p.glob(rest)]

    # --- reading --------------------------------------------------------------------------------
    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self.path) as f:
            return f.read()

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def read_table(self, **kwargs: Any) -> pa.Table:
        """A Parquet file, or every Parquet file of a directory (``_``/``.`` names skipped)."""
        return pq.read_table(self.path, filesystem=self.fs, **kwargs)

    def parquet_file(self) -> pq.ParquetFile:
        return pq.ParquetFile(self.fs.open_input_file(self.path))

    def parquet_rows(self) -> int:
        """Rows of one Parquet file (footer only) or of every ``*.parquet`` file directly under a directory."""
        if self.is_dir():
            return sum(f.parquet_rows() for f in self.glob("*.parquet"))
        return self.parquet_file().metadata.num_rows

    # --- writing --------------------------------------------------------------------------------
    def mkdir(self, parents: bool = True, exist_ok: bool = True) -> None:
        if self.is_local:
            self.local().mkdir(parents=parents, exist_ok=exist_ok)
        # object stores: "directories" are prefixes and exist as soon as something is written under them

    def write_bytes(self, data: bytes) -> None:
        """The whole file at once: a reader sees the old content or the new, never a part."""
        if self.is_local:
            final = self.local()
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
            try:
                tmp.write_bytes(data)
                os.replace(tmp, final)
            finally:
                tmp.unlink(missing_ok=True)
            return
        with self.fs.open_output_stream(self.path) as f:  # one object, visible when the stream closes
            f.write(data)

    def write_text(self, text: str, encoding: str = "utf-8") -> None:
        self.write_bytes(text.encode(encoding))

    def write_parquet(self, table: pa.Table) -> None:
        buf = pa.BufferOutputStream()
        pq.write_table(table, buf)
        self.write_bytes(buf.getvalue().to_pybytes())

    def unlink(self, missing_ok: bool = False) -> None:
        try:
            self.fs.delete_file(self.path)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def rmtree(self) -> None:
        """Delete this directory and everything under it (nothing to do if it does not exist)."""
        if self.is_dir():
            self.fs.delete_dir(self.path)

    def upload(self, local_dir: Path) -> None:
        """Copy a local directory's files under this one (same relative names)."""
        pafs.copy_files(str(local_dir), self.path, source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=self.fs)

    def put_files(self, local_dir: Path) -> list[StoragePath]:
        """Each file directly under ``local_dir`` written here whole (see :meth:`write_bytes`)."""
        done = []
        for f in sorted(Path(local_dir).iterdir()):
            if f.is_file():
                (self / f.name).write_bytes(f.read_bytes())
                done.append(self / f.name)
        return done

    def download(self, local_dir: Path) -> Path:
        Path(local_dir).mkdir(parents=True, exist_ok=True)
        pafs.copy_files(self.path, str(local_dir), source_filesystem=self.fs,
                        destination_filesystem=pafs.LocalFileSystem())
        return Path(local_dir)

    @contextlib.contextmanager
    def replacing(self) -> Iterator[StoragePath]:
        """Replace this directory as a whole: write under the yielded path; on success it becomes this
        directory, committed (:attr:`complete`). On failure the previous content is kept (local) or left
        uncommitted (object store), never taken for complete."""
        if self.is_local:
            final = self.local()
            tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
            tmp.mkdir(parents=True)
            try:
                yield self.at(str(tmp))
                (tmp / MARKER).write_text(uuid.uuid4().hex)  # a commit id (storage.fetch keys its cache on it)
                replace_local_dir(tmp, final)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            return
        (self / MARKER).unlink(missing_ok=True)  # invalidate first: a kill from here on leaves it incomplete
        self.rmtree()
        yield self
        (self / MARKER).write_text(uuid.uuid4().hex)

    @contextlib.contextmanager
    def replacing_local(self) -> Iterator[Path]:
        """:meth:`replacing` for writers that need a local directory (``save_pretrained``, plots)."""
        if self.is_local:
            with self.replacing() as tmp:
                yield tmp.local()
            return
        with tempfile.TemporaryDirectory(prefix="raydebias-") as d:
            yield Path(d)
            with self.replacing() as target:
                target.upload(Path(d))


def replace_local_dir(new: Path, final: Path) -> None:
    """Rename ``new`` to ``final``, replacing a previous ``final`` (moved aside, then deleted)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(final, old)
    os.replace(new, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def cache_root() -> Path:
    return Path(os.environ.get("RAYDEBIAS_CACHE", "~/.cache/raydebias")).expanduser()


def fetch(uri: str) -> Path:
    """A local copy of the directory at ``uri`` (a model on an object store), cached per node.

    The copy is made into a temporary directory and renamed into place, so concurrent actors on one
    node never read a half-copied model; the cache is keyed by the URI and the directory's commit id
    (its marker, see :meth:`StoragePath.replacing`), so a model committed again is fetched again."""
    src = StoragePath.of(uri)
    if not src.is_dir():
        raise StorageError(f"{uri} is not a directory on {src.fs.type_name}")
    stamp = (src / MARKER).read_text() if (src / MARKER).is_file() else ""
    key = hashlib.sha1(f"{src.uri}\n{stamp}".encode()).hexdigest()[:16]
    dest = cache_root() / "remote" / f"{src.name or 'root'}-{key}"
    if (dest / ".fetched").exists():
        return dest
    tmp = dest.with_name(f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        src.download(tmp)
        (tmp / ".fetched").write_text(src.uri)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(tmp, dest)
        except OSError:  # another process on this node won the race: use its copy
            if not (dest / ".fetched").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


__all__ = ["MARKER", "StorageError", "StoragePath", "cache_root", "fetch", "is_uri", "replace_local_dir"]
