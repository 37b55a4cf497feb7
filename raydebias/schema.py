"""Column names and Arrow schemas shared by every stage (declared once, here)."""

from __future__ import annotations

import pyarrow as pa

# --- source rows (SPEC §1) ---------------------------------------------------------------------
ID, POST, SUMMARY, SUBREDDIT, TITLE = "id", "post", "summary", "subreddit", "title"
SOURCE_COLUMNS = (ID, POST, SUMMARY, SUBREDDIT, TITLE)
SOURCE_SCHEMA = pa.schema(
    [
        pa.field(ID, pa.string(), nullable=False),
        pa.field(POST, pa.string(), nullable=False),
        pa.field(SUMMARY, pa.string(), nullable=False),
        pa.field(SUBREDDIT, pa.string()),
        pa.field(TITLE, pa.string()),
    ]
)

# --- named entities (shared by scoring, augmentation, training's NE pooling) ----------------------
# A named entity: character span [start, end) in its text, spaCy/OntoNotes label, surface text.
ENTITY_TYPE = pa.struct([
    pa.field("start", pa.int32()), pa.field("end", pa.int32()), pa.field("label", pa.string()),
    pa.field("text", pa.string()),
])


def entity(start: int, end: int, label: str, text: str) -> dict:
    return {"start": int(start), "end": int(end), "label": label, "text": text}


# --- augmented rows (SPEC §2): the augment stage writes them, the train stage reads them ------------
# A candidate summary. `positive`: reference or backtranslation. `toxicity` and `entities` are filled by
# the scoring stages (null until then; toxic_rewrite scores its own). `info`: JSON with op-specific
# provenance (pivot language, beam score, swapped entities, ...).
CANDIDATE_TYPE = pa.struct([
    pa.field("text", pa.string()), pa.field("op", pa.string()), pa.field("positive", pa.bool_()),
    pa.field("toxicity", pa.float32()), pa.field("entities", pa.list_(ENTITY_TYPE)), pa.field("info", pa.string()),
])
# A rejected candidate or an op failure. reason is a short code ("below_toxicity_threshold",
# "too_short", "duplicate", "error", ...); detail is human-readable; text may be null.
DROP_TYPE = pa.struct([
    pa.field("op", pa.string()), pa.field("reason", pa.string()), pa.field("detail", pa.string()),
    pa.field("text", pa.string()),
])
ENTITY_LIST, CANDIDATE_LIST, DROP_LIST = pa.list_(ENTITY_TYPE), pa.list_(CANDIDATE_TYPE), pa.list_(DROP_TYPE)
POSITIVES, NEGATIVES, TRAINABLE, DROPS = "positives", "negatives", "trainable", "drops"
# One row per source row: its cleaned positives and negatives, and every rejection with its reason.
AUGMENTED_SCHEMA = pa.schema([
    *SOURCE_SCHEMA,
    pa.field(POSITIVES, CANDIDATE_LIST), pa.field(NEGATIVES, CANDIDATE_LIST),
    pa.field(TRAINABLE, pa.bool_()), pa.field(DROPS, DROP_LIST),
])

# --- quarantine ------------------------------------------------------------------------------
# Every row that does not make it into a stage's output lands here with one of these reasons, so
# that rows in = rows kept + rows quarantined holds at every stage (and is asserted).
QUARANTINE_REASONS = {
    "blank_line": "an empty or whitespace-only line inside a JSONL file",
    "invalid_json": "the line is not valid JSON",
    "not_an_object": "the JSON value is not an object/record",
    "invalid_unicode": "a text field holds bytes that are not valid UTF-8 (or lone surrogates)",
    "missing_field": "a required field (post, summary, prompt, ...) is absent or null",
    "non_string_field": "a text field is not a string (number, list, object, ...)",
    "empty_field": "a required text field is empty or whitespace only",
    "unparseable_prompt": "a CarperAI prompt has no 'POST:' section to take the post from",
    "post_too_long": "the post is longer than data.max_post_chars",
    "duplicate_id": "another row with the same id was kept (the first in file order wins)",
    "overlaps_train": "a held-out row whose id or post is also a training row (data.eval_overlap)",
}
STAGE, SPLIT, REASON, DETAIL, SOURCE_FILE, SOURCE_LINE, RAW = (
    "stage", "split", "reason", "detail", "source_file", "source_line", "raw",
)
QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field(STAGE, pa.string(), nullable=False),
        pa.field(SPLIT, pa.string(), nullable=False),
        pa.field(REASON, pa.string(), nullable=False),
        pa.field(DETAIL, pa.string(), nullable=False),
        pa.field(SOURCE_FILE, pa.string(), nullable=False),
        pa.field(SOURCE_LINE, pa.int64(), nullable=False),
        pa.field(ID, pa.string()),
        pa.field(RAW, pa.string(), nullable=False),  # the input record, invalid bytes backslash-escaped
    ]
)



def quarantine_table(entries: list[dict]) -> pa.Table:
    """THE way a stage writes its quarantine: entries (dicts with ``stage``, ``split``, ``reason``, ``raw``
    and optionally ``detail`` (default: the reason), ``source_file`` (default ""), ``source_line``
    (default -1) and ``id``) -> a QUARANTINE_SCHEMA table, in order."""
    missing = [k for k in (STAGE, SPLIT, REASON, RAW) for e in entries if e.get(k) is None]
    if missing:
        raise ValueError(f"quarantine entries without {sorted(set(missing))}")
    return pa.Table.from_pylist(
        [{STAGE: e[STAGE], SPLIT: e[SPLIT], REASON: e[REASON], DETAIL: e.get(DETAIL) or e[REASON],
          SOURCE_FILE: e.get(SOURCE_FILE, ""), SOURCE_LINE: e.get(SOURCE_LINE, -1), ID: e.get(ID), RAW: e[RAW]}
         for e in entries], schema=QUARANTINE_SCHEMA)


# Columns of the intermediate "raw record" datasets produced by the readers.
REC_FILE, REC_LINE, REC_RAW = "_file", "_line", "_raw"
RAW_RECORD_SCHEMA = pa.schema(
    [pa.field(REC_FILE, pa.string()), pa.field(REC_LINE, pa.int64()), pa.field(REC_RAW, pa.binary())]
)
# Rank used to choose among rows sharing an id (lower wins; ties broken by file, line).
REC_RANK = "_rank"
