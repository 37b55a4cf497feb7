"""Locating inputs: ``data.source`` -> a sorted list of files (local paths, or object-store URIs), or a
Hugging Face dataset id (:class:`HubSource`). ``sample:NAME`` names a sample shipped in raydebias/samples.
"""

from __future__ import annotations

import glob as globlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from raydebias.data.formats import EXTENSIONS, base_ext
from raydebias.errors import DataError

SAMPLE_PREFIX = "sample:"
SAMPLES_DIR = Path(__file__).parent.parent / "samples"
_HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass(frozen=True)
class HubSource:
    dataset_id: str
    split: str


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
        if base_ext(expanded) not in EXTENSIONS:
            raise DataError(f"cannot read {source!r}: unsupported file type (use one of {', '.join(EXTENSIONS)})")
        return [os.path.abspath(expanded)]
    if source.startswith((".", "/", "~")) or base_ext(source) in EXTENSIONS:
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
    if kind == pafs.FileType.File and base_ext(root.path) not in EXTENSIONS:
        raise DataError(f"cannot read {source!r}: unsupported file type (use one of {', '.join(EXTENSIONS)})")
    files = sorted(root.at(i.path).uri for i in infos if i.type == pafs.FileType.File
                   and base_ext(i.base_name) in EXTENSIONS and not i.base_name.startswith((".", "_")))
    if not files:
        raise DataError(f"data source {source!r} holds no {'/'.join(EXTENSIONS)} files")
    return files


def _files_under(root: Path, label: str) -> list[str]:
    files = sorted(
        str(p.resolve()) for p in root.rglob("*")
        if p.is_file() and base_ext(p.name) in EXTENSIONS and not p.name.startswith((".", "_"))
    )
    if not files:
        raise DataError(f"data source {label!r} ({root}) holds no {'/'.join(EXTENSIONS)} files")
    return files
