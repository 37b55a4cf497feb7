"""Benchmark rows from wherever they live: a shipped sample, a local file or directory, or the HF hub.

    read_rows("sample:truthfulqa/TruthfulQA.csv")          # the project's own small samples
    read_rows("/data/mmlu_pro", split="validation")        # validation.jsonl / validation.parquet / ...
    read_rows("truthfulqa/truthful_qa:multiple_choice")    # HF id[:config] (needs the hub or its cache)

Files: CSV (header row), JSON lines / JSON array, Parquet (optionally .gz/.bz2/.zst for text formats).
Offline, a hub id is a :class:`raydebias.data.DataError` that says to download the files.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

from raydebias.data import SAMPLE_PREFIX, SAMPLES_DIR, DataError, base_ext, open_input

_FORMATS = (".csv", ".jsonl", ".json", ".ndjson", ".parquet")


def read_file(path: Path) -> list[dict[str, Any]]:
    """All records of one CSV / JSON lines / JSON array / Parquet file (text formats may be compressed)."""
    ext = base_ext(str(path))
    try:
        if ext == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
        with open_input(str(path)) as raw, io.TextIOWrapper(raw, encoding="utf-8") as fh:
            if ext == ".csv":
                return list(csv.DictReader(fh))
            text = fh.read()
    except Exception as e:  # I/O, bad UTF-8, corrupt compression or Parquet
        raise DataError(f"cannot read {path}: {type(e).__name__}: {e}") from e
    if text.lstrip().startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not a valid JSON array ({e})") from e
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{i}: invalid JSON ({e.msg})") from e
    return rows


def _local(path: Path, split: str | None) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and base_ext(p.name) in _FORMATS)
    if split is not None:
        files = [p for p in files if p.name.split(".")[0].split("-")[0] == split]
    if not files:
        raise DataError(f"{path} holds no {'/'.join(_FORMATS)} files"
                        + (f" named {split}.*" if split else ""))
    return files


def read_rows(source: str, split: str | None = None) -> list[dict[str, Any]]:
    """All rows of ``source`` (in file order); ``split`` picks ``split.*`` files or the hub split."""
    if source.startswith(SAMPLE_PREFIX):
        path = SAMPLES_DIR / source[len(SAMPLE_PREFIX):].strip("/")
        if not path.exists():
            raise DataError(f"no shipped sample {source!r} (looked in {path})")
        return [r for f in _local(path, split) for r in read_file(f)]
    local = Path(os.path.expanduser(source))
    if local.exists():
        return [r for f in _local(local, split) for r in read_file(f)]
    if source.startswith((".", "/", "~")):
        raise DataError(f"benchmark source {source!r} does not exist")
    name, _, config = source.partition(":")
    try:
        import datasets

        ds = datasets.load_dataset(name, config or None, split=split or _default_split(name))
    except Exception as e:  # offline hub, unknown id, missing config
        raise DataError(f"cannot load benchmark {source!r} from the Hugging Face hub ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}). Offline, download its files and pass the "
                        "path instead (see the README's Evaluation section).") from e
    return ds.to_list()


def _default_split(name: str) -> str:
    # TruthfulQA ships one "validation" split; RTP one "train" split; MMLU-Pro evaluates "test".
    return {"truthfulqa/truthful_qa": "validation", "truthful_qa": "validation",
            "allenai/real-toxicity-prompts": "train"}.get(name, "test")


__all__ = ["read_file", "read_rows"]
