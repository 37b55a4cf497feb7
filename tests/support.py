"""Shared test inputs for the augmentation ops: shipped sample rows with tiny-NER entities."""

import functools
import json
from pathlib import Path

import pyarrow as pa

from raydebias import schema as S
from raydebias.augment.candidates import ENTITY_LIST, POST_ENTITIES, SUMMARY_ENTITIES, entity, norm  # noqa: F401
from raydebias.data import record_to_row

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "jobs" / "configs" / "smoke.yaml"
SAMPLE = REPO / "raydebias/samples/tldr/train/carper-a.jsonl"
# What an op receives: source columns + the NER stage's entity columns.
OP_INPUT_SCHEMA = pa.schema([pa.field(c, pa.string()) for c in S.SOURCE_COLUMNS]
                            + [pa.field(POST_ENTITIES, ENTITY_LIST), pa.field(SUMMARY_ENTITIES, ENTITY_LIST)])


@functools.cache
def tiny_nlp():
    from raydebias.models import load_spacy

    return load_spacy("tiny:spacy-ner")


def ents(text: str) -> list[dict]:
    return [entity(e.start_char, e.end_char, e.label_, e.text) for e in tiny_nlp()(text).ents]


def sample_rows(n: int = 3) -> list[dict]:
    """The first ``n`` CarperAI sample rows as op input dicts (entities from the tiny NER)."""
    rows = []
    for line in SAMPLE.read_text().splitlines()[:n]:
        row, _ = record_to_row(json.loads(line), "carper")
        row[POST_ENTITIES], row[SUMMARY_ENTITIES] = ents(row["post"]), ents(row["summary"])
        rows.append(row)
    return rows


def op_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=OP_INPUT_SCHEMA)
