"""The public Reddit TL;DR layouts: detect a file's layout, and turn one record into a source row.

Layouts (``data.layout``; ``auto`` detects per file from the first record's keys):

- ``carper``: CarperAI/openai_summarize_tldr, ``prompt`` = "SUBREDDIT: r/…\\nTITLE: …\\nPOST: …\\nTL;DR:",
  ``label`` = summary. No id column: the id is a content hash, so exact duplicate rows collide.
- ``webis``: webis/tldr-17, ``content`` (post), ``summary``, ``id``, ``subreddit`` (+ author, body, …).
- ``comparisons``: openai/summarize_from_feedback, ``info{id, post, title, subreddit}``,
  ``summaries[{text, policy, note}]``, ``choice``. One post appears in many comparisons: the human
  reference (policy ``ref``) is preferred, else the chosen summary; repeats become ``duplicate_id``.
- ``plain``: any JSONL/Parquet/CSV with ``post`` + ``summary`` (+ optional ``id``, ``subreddit``, ``title``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from typing import Any

import pyarrow as pa

from raydebias import schema as S
from raydebias.data.formats import base_ext, open_input
from raydebias.errors import DataError
from raydebias.prompts import parse_prompt

LAYOUTS = ("carper", "webis", "comparisons", "plain")
_SURROGATE = re.compile("[\ud800-\udfff]")


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


class Reject(Exception):
    """A record that goes to the quarantine: its reason (:data:`raydebias.schema.QUARANTINE_REASONS`), a
    detail for humans, and its id when known."""

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
            raise Reject("missing_field", f"field {label!r} is missing")
        return None
    value = rec[key]
    if not isinstance(value, str):
        raise Reject("non_string_field", f"field {label!r} is {type(value).__name__}, not a string")
    if _SURROGATE.search(value):
        raise Reject("invalid_unicode", f"field {label!r} holds bytes that are not valid UTF-8")
    value = value.strip()
    if required and not value:
        raise Reject("empty_field", f"field {label!r} is empty")
    return value or None


def _id(rec: dict, key: str, label: str | None = None) -> str | None:
    value = rec.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise Reject("non_string_field", f"field {label or key!r} is {type(value).__name__}, not a string")
    value = str(value).strip()
    if _SURROGATE.search(value):
        raise Reject("invalid_unicode", f"field {label or key!r} holds bytes that are not valid UTF-8")
    return value or None


def record_to_row(rec: Any, layout: str) -> tuple[dict[str, Any], int]:
    """One parsed record -> (source row, rank). Raises Reject with a quarantine reason."""
    if not isinstance(rec, dict):
        raise Reject("not_an_object", f"expected a JSON object, got {type(rec).__name__}")
    rank = 0
    if layout == "carper":
        prompt = _text(rec, "prompt")
        summary = _text(rec, "label")
        fields = parse_prompt(prompt)
        if fields is None:
            raise Reject("unparseable_prompt", "prompt has no 'POST:' section")
        if not fields["post"]:
            raise Reject("empty_field", "field 'post' (inside prompt) is empty")
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
            raise Reject("missing_field" if info is None else "non_string_field",
                         "field 'info' is missing" if info is None else "field 'info' is not an object")
        post = _text(info, "post", "info.post")
        summaries = rec.get("summaries")
        if not isinstance(summaries, list) or not summaries:
            raise Reject("missing_field", "field 'summaries' is missing or empty")
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
            raise Reject("non_string_field", f"summaries[{pick}] is not an object")
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
