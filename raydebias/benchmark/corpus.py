"""The text corpora of the comparison: the baselines' corpus (``benchmark.corpus``: CDA fine-tuning text,
INLP / SentenceDebias sentences) and the held-out general text of the forgetting measure
(``benchmark.general_text``).

    iter_texts("tldr", ...)                               # this run's TL;DR training posts (data/sources)
    iter_texts("sample:general", ...)                     # a shipped sample (raydebias/samples/general)
    iter_texts("/data/wiki", ...)                         # .txt (a text per paragraph) / .jsonl / .parquet / .csv
    iter_texts("wikimedia/wikipedia:20231101.en", ...)    # a hub dataset, streamed (never held in memory)

Texts come lazily, in order; a text that is not a non-empty string is counted as ``skipped`` with why
(``TextCounts``), never dropped silently. A corpus that yields no text at all is a :class:`DataError`
naming it.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raydebias.errors import DataError, StageInputError

TLDR = "tldr"
TEXT_COLUMN = "text"


@dataclass
class TextCounts:
    """Texts read from a corpus: ``kept`` + sum(``skipped``) = ``read``."""

    read: int = 0
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {"read": self.read, "kept": self.kept, "skipped": dict(self.skipped)}


def _paragraphs(path: Path) -> Iterator[str]:
    """A .txt file as paragraphs (blank-line separated), the unit of WikiText and of plain-text dumps."""
    block: list[str] = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                block.append(line.strip())
            elif block:
                yield " ".join(block)
                block = []
    if block:
        yield " ".join(block)


def _records(source: str, split: str) -> Iterator[Any]:
    from raydebias.data import SAMPLE_PREFIX, SAMPLES_DIR
    from raydebias.evaluate.sources import read_rows

    path = None
    if source.startswith(SAMPLE_PREFIX):
        path = SAMPLES_DIR / source[len(SAMPLE_PREFIX):].strip("/")
        if not path.exists():
            raise DataError(f"no shipped sample {source!r} (looked in {path})")
    elif Path(os.path.expanduser(source)).exists():
        path = Path(os.path.expanduser(source))
    elif source.startswith((".", "/", "~")):
        raise DataError(f"corpus {source!r} does not exist")
    if path is not None:
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for f in files:
            if f.suffix == ".txt":
                yield from _paragraphs(f)
            elif not f.name.startswith((".", "_")):
                yield from read_rows(str(f))
        return
    yield from _hub(source, split)


def _hub(source: str, split: str) -> Iterator[Any]:
    name, _, config = source.partition(":")
    try:
        import datasets

        ds = datasets.load_dataset(name, config or None, split=split, streaming=True)
        it = iter(ds)
        first = next(it, None)
    except Exception as e:  # offline hub, unknown id, missing config
        raise DataError(f"cannot load corpus {source!r} from the Hugging Face hub ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}). Offline, download it and pass the path "
                        "(a .txt/.jsonl/.parquet file or directory), or use a shipped sample (sample:general) or "
                        "this run's TL;DR posts (tldr).") from e
    if first is not None:
        yield first
        yield from it


def _tldr_posts(out: Any) -> Iterator[str]:
    src = out.sources_dir("train")
    if not src.complete:
        raise StageInputError(f"benchmark: the corpus is this run's TL;DR posts, but {src} is missing or incomplete: "
                              "run --stage data first")
    for part in sorted(src.glob("*.parquet"), key=lambda p: p.name):
        yield from part.read_table(columns=["post"]).column("post").to_pylist()


def iter_texts(source: str, out: Any = None, *, split: str = "train", limit: int | None = None,
               counts: TextCounts | None = None) -> Iterator[str]:
    """The texts of ``source``, lazily and in order, at most ``limit`` of them; ``counts`` (if given) records
    what was read, kept and skipped. Records are strings or mappings with a ``text`` field."""
    counts = counts if counts is not None else TextCounts()
    records = _tldr_posts(out) if source == TLDR else _records(source, split)
    for rec in records:
        if limit is not None and counts.kept >= limit:
            return
        counts.read += 1
        text = rec.get(TEXT_COLUMN) if isinstance(rec, dict) else rec
        if not isinstance(text, str):
            counts.skipped["no_text_field" if isinstance(rec, dict) else "not_text"] += 1
            continue
        if not text.strip():
            counts.skipped["empty"] += 1
            continue
        counts.kept += 1
        yield text


def read_texts(source: str, out: Any = None, *, split: str = "train", limit: int | None = None,
               what: str = "corpus") -> tuple[list[str], TextCounts]:
    """All texts of ``source`` (up to ``limit``) and their counts; none at all is a DataError."""
    counts = TextCounts()
    texts = list(iter_texts(source, out, split=split, limit=limit, counts=counts))
    if not texts:
        raise DataError(f"benchmark: the {what} {source!r} holds no text ({counts.read} records read, skipped: "
                        f"{dict(counts.skipped) or 'none'})")
    return texts, counts


__all__ = ["TLDR", "TextCounts", "iter_texts", "read_texts"]
