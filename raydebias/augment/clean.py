"""Cleaning and the final augmented row (SPEC §2 "Cleaning", paper Section 4.2 last paragraph).

Runs after every op and after scoring, on each source row:

1. strip echoed prompt text and few-shot scaffolding ("TL;DR:", "Toxic rewrite:", "Original text:",
   "SUBREDDIT:/TITLE:/POST:" lines) from generated candidates;
2. reject texts of fewer than ``min_words`` words (3);
3. drop a backtranslation that introduces a named entity absent from post + summary (CLIFF's filter);
4. drop exact duplicates within the row (after whitespace/case normalisation), and negatives equal to a
   positive (a candidate cannot be pushed away from itself);
5. split into positives (reference + backtranslations) and negatives (everything else); a row with
   fewer than ``min_positives`` (2) positives is kept but marked ``trainable = False`` (Section 5).

Every rejection is appended to the row's ``drops`` with its op and reason, so per-op counts add up:
generated = kept + dropped, per op.
"""

from __future__ import annotations

import re

import pyarrow as pa

from raydebias import schema as S
from raydebias.augment.candidates import (
    CANDIDATE_LIST,
    CANDIDATES,
    DROP_LIST,
    DROPS,
    POST_ENTITIES,
    SUMMARY_ENTITIES,
    drop,
    ensure_columns,
    norm,
)
from raydebias.config import AugmentConfig

REFERENCE_OP = "reference"
POSITIVE_OPS = (REFERENCE_OP, "backtranslate")
POSITIVES, NEGATIVES, TRAINABLE = "positives", "negatives", "trainable"

# The augmented dataset: one row per source row (declared once, here).
AUGMENTED_SCHEMA = pa.schema([
    *S.SOURCE_SCHEMA,
    pa.field(POSITIVES, CANDIDATE_LIST), pa.field(NEGATIVES, CANDIDATE_LIST),
    pa.field(TRAINABLE, pa.bool_()), pa.field(DROPS, DROP_LIST),
])

_SCAFFOLD_LINE = re.compile(r"^\s*(SUBREDDIT:|TITLE:|POST:|Original text:)", re.I)
_LEADING_LABEL = re.compile(r"^\s*(TL;DR:|TLDR:|Toxic rewrite:|Summary:)\s*", re.I)


def strip_scaffolding(text: str) -> str:
    """Remove echoed prompt/few-shot scaffolding: leading labels, and everything from an echoed block on."""
    lines = text.splitlines()
    kept = []
    for line in lines:
        if _SCAFFOLD_LINE.match(line):
            break  # the model started echoing a prompt/exemplar block: nothing after it is the answer
        kept.append(line)
    out = "\n".join(kept).strip()
    while True:
        stripped = _LEADING_LABEL.sub("", out, count=1).strip()
        if stripped == out:
            return out
        out = stripped


def novel_entities(cand_entities: list[dict] | None, post: str, summary: str) -> list[str]:
    """Entities of a candidate that appear in neither the post nor the summary (case-insensitive)."""
    source = norm(post + " \n " + summary)
    return sorted({e["text"] for e in (cand_entities or []) if norm(e["text"]) not in source})


def reference_candidate(summary: str) -> dict:
    return {"text": summary, "op": REFERENCE_OP, "positive": True, "toxicity": None, "entities": None, "info": None}


def add_reference(batch: pa.Table) -> pa.Table:
    """First step of augmentation: the reference summary is candidate 0 (a positive), scored like the rest."""
    batch = ensure_columns(batch)
    cands = [[reference_candidate(s)] + (c or []) for s, c in
             zip(batch.column(S.SUMMARY).to_pylist(), batch.column(CANDIDATES).to_pylist(), strict=True)]
    idx = batch.schema.get_field_index(CANDIDATES)
    return batch.set_column(idx, pa.field(CANDIDATES, CANDIDATE_LIST), pa.array(cands, CANDIDATE_LIST))


def clean_row(row: dict, cfg: AugmentConfig) -> dict:
    """One working row (with candidates/drops) -> one AUGMENTED_SCHEMA row."""
    drops = list(row.get(DROPS) or [])
    positives, negatives, seen_pos, seen_all = [], [], set(), set()
    cands = sorted(row.get(CANDIDATES) or [], key=lambda c: (not c["positive"], c["op"] != REFERENCE_OP))
    for c in cands:
        op = c["op"]
        if op == REFERENCE_OP:
            text = c["text"]
        else:
            text = strip_scaffolding(c["text"])
            if len(text.split()) < cfg.min_words:
                drops.append(drop(op, "too_short", f"{len(text.split())} words < augment.min_words={cfg.min_words}",
                                  c["text"]))
                continue
            if (op == "backtranslate" and cfg.backtranslate.novel_entity_filter
                    and (novel := novel_entities(c["entities"], row[S.POST], row[S.SUMMARY]))):
                drops.append(drop(op, "novel_entity", f"introduces {novel}", text))
                continue
        key = norm(text)
        if key in seen_all:
            reason = "same_as_positive" if (key in seen_pos and not c["positive"]) else "duplicate"
            drops.append(drop(op, reason, "an equal candidate is already kept for this row", text))
            continue
        seen_all.add(key)
        c = {**c, "text": text}
        if c["positive"]:
            seen_pos.add(key)
            positives.append(c)
        else:
            negatives.append(c)
    out = {k: row[k] for k in S.SOURCE_COLUMNS}
    out.update({POSITIVES: positives, NEGATIVES: negatives, TRAINABLE: len(positives) >= cfg.min_positives,
                DROPS: drops})
    return out


class Finalize:
    """Batch stage: clean every row and emit AUGMENTED_SCHEMA (drops the working entity columns)."""

    def __init__(self, cfg: AugmentConfig):
        self.cfg = cfg

    def __call__(self, batch: pa.Table) -> pa.Table:
        batch = ensure_columns(batch)
        rows = [clean_row(r, self.cfg) for r in batch.drop_columns(
            [c for c in (POST_ENTITIES, SUMMARY_ENTITIES) if c in batch.column_names]).to_pylist()]
        return pa.Table.from_pylist(rows, schema=AUGMENTED_SCHEMA)
