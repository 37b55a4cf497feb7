"""Cleaning and the final augmented row (SPEC §2 "Cleaning", paper Section 4.2 last paragraph).

Two steps, so that every entity span and toxicity score belongs to the exact text that is stored:

``CleanCandidates`` (stage ``clean``) runs after the ops and BEFORE entity annotation and toxicity scoring
(it declares ``after`` = every op, and the scoring stages declare ``needs = ("clean",)``):

1. strip echoed prompt text and few-shot scaffolding ("TL;DR:", "Toxic rewrite:", "Original text:",
   "SUBREDDIT:/TITLE:/POST:" lines) from generated candidates; a candidate whose text changed loses
   the ``entities``/``toxicity`` an op computed on its raw text, so the scoring stages recompute them;
2. reject texts of fewer than ``min_words`` words (3);
3. drop exact duplicates within the row (after whitespace/case normalisation) among positives and
   among negatives (the reference and the earlier op win).

``Finalize`` runs after the scoring stages, on the cleaned and scored candidates:

4. drop a backtranslation that introduces a named entity absent from post + summary (CLIFF's filter;
   it needs the candidate's entities, so it cannot run before annotation);
5. drop a toxic rewrite whose final text scores below ``toxic_rewrite.toxicity_threshold`` (kept iff
   toxic holds for the stored text, also after stripping changed it);
6. drop negatives equal to a kept positive (a candidate cannot be pushed away from itself);
7. split into positives (reference + backtranslations) and negatives (everything else); a row with
   fewer than ``min_positives`` (2) positives is kept but marked ``trainable = False`` (Section 5).

Every rejection is appended to the row's ``drops`` with its op and reason, so per-op counts add up:
generated = kept + dropped, per op. ``Finalize`` checks that every kept candidate carries a toxicity
and entity spans that index its own text, and raises if not (a stage order bug, never bad input).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

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
    set_column,
)
from raydebias.augment.registry import OPS
from raydebias.augment.stage import AugmentStage
from raydebias.config import AugmentConfig

REFERENCE_OP = "reference"
POSITIVE_OPS = (REFERENCE_OP, "backtranslate")
# The augmented dataset (one row per source row) is declared in raydebias/schema.py.
AUGMENTED_SCHEMA, POSITIVES, NEGATIVES, TRAINABLE = S.AUGMENTED_SCHEMA, S.POSITIVES, S.NEGATIVES, S.TRAINABLE

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


def _sorted_candidates(cands: list[dict]) -> list[dict]:
    # Positives first (the reference first of all), then ops in pipeline order (the sort is stable).
    return sorted(cands, key=lambda c: (not c["positive"], c["op"] != REFERENCE_OP))


def clean_candidates(row: dict, min_words: int) -> tuple[list[dict], list[dict]]:
    """Steps 1-3 on one working row -> (candidates kept, drops); run before annotation and scoring."""
    drops = list(row.get(DROPS) or [])
    kept, seen = [], set()
    for c in _sorted_candidates(list(row.get(CANDIDATES) or [])):
        op = c["op"]
        text = c["text"] if op == REFERENCE_OP else strip_scaffolding(c["text"])
        if op != REFERENCE_OP and len(text.split()) < min_words:
            drops.append(drop(op, "too_short", f"{len(text.split())} words < augment.min_words={min_words}",
                              c["text"]))
            continue
        key = (bool(c["positive"]), norm(text))
        if key in seen:
            drops.append(drop(op, "duplicate", "an equal candidate is already kept for this row", text))
            continue
        seen.add(key)
        if text != c["text"]:  # scores an op computed on the raw text do not belong to the stored text
            c = {**c, "text": text, "toxicity": None, "entities": None}
        kept.append(c)
    return kept, drops


class CleanCandidates(AugmentStage):
    """Batch stage (no model): :func:`clean_candidates` on every row, before annotation and scoring.

    Its one setting is ``augment.min_words`` (no section of its own, so no actor pool: plain tasks).
    """

    name = "clean"
    section = None
    reads = ("candidates",)
    writes = ("candidates", "drops")
    after = tuple(OPS)  # every candidate an op made is cleaned

    def __init__(self, min_words: int = 3, device: str = "cpu", seed: int = 0):
        # device and seed are accepted so every stage is built the same way; cleaning is deterministic.
        self.min_words = min_words

    @classmethod
    def from_config(cls, cfg: AugmentConfig, device: str = "cpu", seed: int = 0) -> CleanCandidates:
        return cls(cfg.min_words, device=device, seed=seed)

    def process_batch(self, batch: pa.Table) -> pa.Table:
        batch = ensure_columns(batch)
        cols = batch.select([c for c in (*S.SOURCE_COLUMNS, CANDIDATES, DROPS) if c in batch.column_names])
        done = [clean_candidates(r, self.min_words) for r in cols.to_pylist()]
        batch = set_column(batch, CANDIDATES, [d[0] for d in done], CANDIDATE_LIST)
        return set_column(batch, DROPS, [d[1] for d in done], DROP_LIST)


def check_scored(row_id: str, c: dict) -> None:
    """Raise unless ``c`` carries a toxicity and entity spans that index its own text."""
    if c["toxicity"] is None or c["entities"] is None:
        raise RuntimeError(f"augment: row {row_id}: candidate {c['op']!r} reached finalize without "
                           f"{'toxicity' if c['toxicity'] is None else 'entities'}: the scoring stages must run "
                           f"after cleaning")
    for e in c["entities"]:
        if c["text"][e["start"]:e["end"]] != e["text"]:
            raise RuntimeError(f"augment: row {row_id}: candidate {c['op']!r} has span {e} that does not index "
                               f"its text {c['text']!r}: entities were computed on another text")


@dataclass(frozen=True)
class FinalizeRules:
    """The settings finalize reads, taken from three config sections once (the stage takes nothing else)."""

    toxicity_threshold: float  # augment.toxic_rewrite.toxicity_threshold: "kept iff toxic" on the stored text
    novel_entity_filter: bool  # augment.backtranslate.novel_entity_filter (CLIFF)
    min_positives: int  # augment.min_positives: a row is trainable with at least this many positives

    @classmethod
    def from_config(cls, cfg: AugmentConfig) -> FinalizeRules:
        return cls(cfg.toxic_rewrite.toxicity_threshold, cfg.backtranslate.novel_entity_filter, cfg.min_positives)


def finalize_row(row: dict, rules: FinalizeRules) -> dict:
    """Steps 4-7 on one cleaned and scored working row -> one AUGMENTED_SCHEMA row."""
    drops = list(row.get(DROPS) or [])
    threshold = rules.toxicity_threshold
    survivors = []
    for c in _sorted_candidates(list(row.get(CANDIDATES) or [])):
        op = c["op"]
        if op == REFERENCE_OP:
            survivors.append(c)
            continue
        if (op == "backtranslate" and rules.novel_entity_filter
                and (novel := novel_entities(c["entities"], row[S.POST], row[S.SUMMARY]))):
            drops.append(drop(op, "novel_entity", f"introduces {novel}", c["text"]))
            continue
        if op == "toxic_rewrite" and c["toxicity"] is not None and c["toxicity"] < threshold:
            drops.append(drop(op, "below_toxicity_threshold", f"after cleaning: toxicity {c['toxicity']:.4f} < "
                              f"threshold {threshold}", c["text"]))
            continue
        survivors.append(c)
    positives = [c for c in survivors if c["positive"]]
    seen_pos = {norm(c["text"]) for c in positives}
    negatives = []
    for c in survivors:
        if c["positive"]:
            continue
        if norm(c["text"]) in seen_pos:
            drops.append(drop(c["op"], "same_as_positive", "an equal positive is kept for this row", c["text"]))
            continue
        negatives.append(c)
    out = {k: row[k] for k in S.SOURCE_COLUMNS}
    out.update({POSITIVES: positives, NEGATIVES: negatives, TRAINABLE: len(positives) >= rules.min_positives,
                DROPS: drops})
    return out


def clean_row(row: dict, cfg: AugmentConfig, score: Any = None) -> dict:
    """Both steps on one working row (tests, tools): clean, then ``score(candidates)`` (filling null
    ``toxicity``/``entities`` in place, as the scoring stages do), then finalize."""
    cands, drops = clean_candidates(row, cfg.min_words)
    if score is not None:
        score(cands)
    return finalize_row({**row, CANDIDATES: cands, DROPS: drops}, FinalizeRules.from_config(cfg))


class Finalize:
    """Batch stage: :func:`finalize_row` on every row and emit AUGMENTED_SCHEMA (drops the working
    entity columns). Runs after the scoring stages; every kept candidate is checked (:func:`check_scored`)."""

    def __init__(self, rules: FinalizeRules):
        self.rules = rules

    def __call__(self, batch: pa.Table) -> pa.Table:
        batch = ensure_columns(batch)
        rows = [finalize_row(r, self.rules) for r in batch.drop_columns(
            [c for c in (POST_ENTITIES, SUMMARY_ENTITIES) if c in batch.column_names]).to_pylist()]
        for r in rows:
            for c in r[POSITIVES] + r[NEGATIVES]:
                check_scored(r[S.ID], c)
        return pa.Table.from_pylist(rows, schema=AUGMENTED_SCHEMA)
