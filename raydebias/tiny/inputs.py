"""The inputs of every tiny model's build: the tokenizer training corpus and the NER gazetteer.

Both are hashed into the stamps (`raydebias.tiny.cache`), so a change to the shipped samples or the
kit's own data (raydebias/samples/tiny/) rebuilds the models that depend on it.
"""

from __future__ import annotations

import json
import string
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol

# raydebias/samples (this file is raydebias/tiny/inputs.py).
SAMPLES_DIR = Path(__file__).resolve().parent.parent / "samples"
# Shipped samples are small; the cap only keeps a large future sample set from making tokenizer
# training (and so every cold `ensure`) slow. Deterministic: files are read in sorted order.
MAX_SAMPLE_CHARS = 2_000_000

PRINTABLE = "".join(ch for ch in string.printable if ch.isprintable())  # printable ASCII, space included

# The kit's own data (not sample data: tests point SAMPLES_DIR elsewhere, this stays): the built-in
# training text (Reddit-flavoured English with the names, sums and dates the pipelines look for, plus
# German, French and Spanish so the Marian tokenizers see both sides of each pair) and the built-in
# gazetteer of spacy-ner (phrases per OntoNotes label, and the word lists of the token patterns).
KIT_DATA_DIR = Path(__file__).resolve().parent.parent / "samples" / "tiny"
CORPUS_FILE = KIT_DATA_DIR / "corpus.txt"
GAZETTEER_FILE = KIT_DATA_DIR / "gazetteer.json"

# Letters of German, French and Spanish, so none of them is <unk> in the Marian/T5 vocabularies even
# when the sample data never uses them.
LATIN_LETTERS = "ÀÂÄÇÉÈÊËÎÏÔÖÙÛÜŸÑÁÍÓÚŒÆàâäçéèêëîïôöùûüÿñáíóúœæß¿¡«»€£–—‘’“”…"

# OntoNotes labels, as en_core_web_trf uses them.
ONTONOTES_LABELS = (
    "PERSON", "NORP", "FAC", "ORG", "GPE", "LOC", "PRODUCT", "EVENT", "WORK_OF_ART", "LAW",
    "LANGUAGE", "DATE", "TIME", "PERCENT", "MONEY", "QUANTITY", "ORDINAL", "CARDINAL",
)  # fmt: skip


def builtin_text() -> str:
    """The built-in training text (samples/tiny/corpus.txt)."""
    return CORPUS_FILE.read_text(encoding="utf-8")


def builtin_gazetteer() -> dict:
    """The built-in gazetteer (samples/tiny/gazetteer.json): ``phrases`` {label: [phrase, ...]} and the
    word lists of the token patterns (``first_names``, ``months``, ``money_words``, ...)."""
    return json.loads(GAZETTEER_FILE.read_text(encoding="utf-8"))


def _string_values(obj) -> Iterable[str]:
    """Every string value in a parsed JSON document, depth first, in document order."""
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _string_values(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from _string_values(value)


def _sorted_files(pattern: str) -> list[Path]:
    """Sample files matching `pattern` under raydebias/samples, in a machine-independent order."""
    if not SAMPLES_DIR.is_dir():
        return []
    return sorted(SAMPLES_DIR.glob(pattern), key=lambda p: p.relative_to(SAMPLES_DIR).as_posix())


def sample_strings() -> list[str]:
    """All string values of the shipped TL;DR sample JSONL files, capped at MAX_SAMPLE_CHARS in total.

    The shipped data is what smoke runs feed the tiny models, so training the tokenizers on it keeps
    <unk> rare and sequence lengths realistic. Only the TL;DR samples: the benchmark samples added later
    (evaluation) would otherwise change every tokenizer, and with it every tiny model, whenever one is
    added.
    """
    out: list[str] = []
    total = 0
    for path in _sorted_files("tldr/**/*.jsonl"):
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(
                        f"{path}:{lineno}: not valid JSON ({exc.msg}); the tiny-model kit trains its "
                        "tokenizers on the shipped samples, so fix or remove that line"
                    ) from exc
                for text in _string_values(record):
                    if total >= MAX_SAMPLE_CHARS:
                        return out
                    out.append(text)
                    total += len(text)
    return out


def training_corpus() -> list[str]:
    """The tokenizer training text as lines: built-in text, samples, printable ASCII, Latin letters."""
    lines = [ln.strip() for ln in builtin_text().splitlines()]
    for text in sample_strings():
        lines.extend(ln.strip() for ln in text.splitlines())
    lines.append(PRINTABLE)
    lines.append(LATIN_LETTERS)
    return [ln for ln in lines if ln]


def _gazetteer_from_tsv() -> list[tuple[str, str]]:
    """(text, label) lines of raydebias/samples/**/entities/*.tsv; '#' comments and a header allowed."""
    entries: list[tuple[str, str]] = []
    for path in _sorted_files("**/entities/*.tsv"):
        with open(path, encoding="utf-8") as fh:
            for lineno, raw in enumerate(fh, 1):
                line = raw.rstrip("\r\n")
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
                parts = line.split("\t")
                if lineno == 1 and [p.strip().upper() for p in parts] == ["TEXT", "LABEL"]:
                    continue
                if len(parts) != 2 or not parts[0].strip():
                    raise ValueError(f"{path}:{lineno}: expected 'TEXT<TAB>LABEL', got {line!r}")
                text, label = parts[0].strip(), parts[1].strip().upper()
                if label not in ONTONOTES_LABELS:
                    raise ValueError(
                        f"{path}:{lineno}: unknown entity label {label!r}; use one of {', '.join(ONTONOTES_LABELS)}"
                    )
                entries.append((text, label))
    return entries


class BuildInputs(Protocol):
    """What a builder reads while one `build` call runs (implemented by `raydebias.tiny.cache._Inputs`, which
    computes each lazily, once): the training corpus, the NER patterns, and a memo for shared tokenizers."""

    @property
    def corpus(self) -> list[str]: ...

    @property
    def patterns(self) -> list[dict]: ...

    def memo(self, key: str, make: Callable[[], object]) -> object: ...
