"""raydebias.augment.annotate on plain Arrow tables (no Ray), with the real tiny models.

Rows are three shipped sample records; candidates are hand-made. The failure tests wrap the loaded
model at its true boundary (`scorer.score` / `tagger.tag`) so one chosen text fails.
"""

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from raydebias import models
from raydebias import schema as S
from raydebias.augment.annotate import AnnotateCandidates, AnnotateEntities, ScoreToxicity
from raydebias.augment.candidates import (
    CANDIDATE_LIST,
    CANDIDATES,
    DROPS,
    POST_ENTITIES,
    SUMMARY_ENTITIES,
    candidate,
    ensure_columns,
    entity,
    set_column,
)
from raydebias.config import AugmentConfig
from raydebias.data import record_to_row

torch.set_num_threads(1)

SAMPLE = Path(__file__).resolve().parents[1] / "raydebias/samples/tldr/train/carper-a.jsonl"
BAD = "this candidate text makes the model fail"


def cfg() -> AugmentConfig:
    c = AugmentConfig()
    c.ner.model = "tiny:spacy-ner"
    c.toxicity.model = "tiny:toxic-bert"
    return c


@pytest.fixture(scope="module")
def batch() -> pa.Table:
    """3 sample rows + an extra column; row 0 has a pre-scored toxic rewrite and pre-set entities."""
    with open(SAMPLE, encoding="utf-8") as fh:
        rows = [record_to_row(json.loads(line), "carper")[0] for line in fh.readlines()[:3]]
    table = pa.Table.from_pylist(rows, schema=S.SOURCE_SCHEMA)
    table = table.append_column("extra", pa.array([1, 2, 3], pa.int64()))
    table = ensure_columns(table)
    preset = [entity(0, 4, "PERSON", "Greg")]  # not what the tagger finds ("Greg Tolliver")
    cands = [
        [candidate(rows[0]["summary"], "reference", positive=True),
         candidate("Greg Tolliver is a lying thief who owes me $1,840.", "toxic_rewrite", toxicity=0.9, entities=preset)],
        [candidate("Walter's oak crushed my Subaru Outback on Monday.", "entity_swap", pivot="none"),
         candidate(BAD, "low_confidence")],
        [],
    ]
    return set_column(table, CANDIDATES, cands, CANDIDATE_LIST)


def test_stage_names_are_the_registry_keys():
    from raydebias.augment.stage import stage_classes

    classes = stage_classes()
    assert (classes["ner"], classes["ner_candidates"], classes["toxicity"]) == (
        AnnotateEntities, AnnotateCandidates, ScoreToxicity)
    assert (AnnotateEntities.name, AnnotateCandidates.name, ScoreToxicity.name) == ("ner", "ner_candidates", "toxicity")
    # both NER passes use augment.ner (one model setting, one resources default)
    assert AnnotateEntities.section == AnnotateCandidates.section == "ner"
    c = cfg()
    # a CPU pipeline (the tiny kit's, en_core_web_sm) never takes the GPU fraction (test_ner_device.py)
    assert AnnotateEntities.resources(c) == AnnotateCandidates.resources(c) == dataclasses.replace(
        c.ner.resources, num_gpus=0.0)
    assert ScoreToxicity.resources(c) is c.toxicity.resources


def test_annotate_entities_fills_sources_and_null_candidates(batch):
    before = batch.to_pylist()
    out = AnnotateEntities(cfg().ner)(batch)
    assert batch.to_pylist() == before  # the input table is not changed
    assert out.num_rows == 3 and out.column(S.ID).to_pylist() == batch.column(S.ID).to_pylist()
    for name in (S.ID, S.POST, S.SUMMARY, S.SUBREDDIT, S.TITLE, "extra", DROPS):
        assert out.column(name).equals(batch.column(name)), name

    rows = out.to_pylist()
    for row in rows:
        assert row[POST_ENTITIES] and row[SUMMARY_ENTITIES]  # every sample names people, places, sums
        for text, ents in ((row[S.POST], row[POST_ENTITIES]), (row[S.SUMMARY], row[SUMMARY_ENTITIES])):
            assert all(text[e["start"] : e["end"]] == e["text"] for e in ents)
        for c in row[CANDIDATES]:
            assert c["entities"] is not None
            assert all(c["text"][e["start"] : e["end"]] == e["text"] for e in c["entities"])
    summary0 = {(e["label"], e["text"]) for e in rows[0][SUMMARY_ENTITIES]}
    assert {("PERSON", "Greg Tolliver"), ("MONEY", "$1,840")} <= summary0
    assert rows[0][CANDIDATES][0]["entities"] == rows[0][SUMMARY_ENTITIES]  # reference == summary text
    assert rows[0][CANDIDATES][1]["entities"] == [entity(0, 4, "PERSON", "Greg")]  # pre-set: kept
    assert ("PERSON", "Walter") in {(e["label"], e["text"]) for e in rows[1][CANDIDATES][0]["entities"]}
    assert [[c["text"] for c in r[CANDIDATES]] for r in rows] == [
        [c["text"] for c in r[CANDIDATES]] for r in before
    ]


def test_score_toxicity_fills_null_scores_and_keeps_given_ones(batch):
    before = batch.to_pylist()
    stage = ScoreToxicity(cfg().toxicity)
    out = stage(batch)
    assert batch.to_pylist() == before
    for name in (S.ID, S.POST, S.SUMMARY, POST_ENTITIES, SUMMARY_ENTITIES, "extra", DROPS):
        assert out.column(name).equals(batch.column(name)), name

    cands = out.column(CANDIDATES).to_pylist()
    assert [len(c) for c in cands] == [2, 2, 0]
    assert cands[0][1]["toxicity"] == np.float32(0.9)  # toxic_rewrite's own score stays
    scored = [cands[0][0], cands[1][0], cands[1][1]]
    expected = models.load_detoxify("tiny:toxic-bert").predict([c["text"] for c in scored])["toxicity"]
    assert [c["toxicity"] for c in scored] == pytest.approx(expected, abs=1e-5)  # float32 column
    assert cands[1][0]["info"] == batch.column(CANDIDATES).to_pylist()[1][0]["info"]
    # Idempotent: nothing is null any more, so a second pass changes nothing.
    assert stage(out).equals(out)


class _FailsOn:
    """The loaded scorer/tagger, except that the `bad` texts raise (or, with mode "nan", score NaN)."""

    def __init__(self, inner, method: str, bad: set[str], mode: str = "raise"):
        self.inner, self.method, self.bad, self.mode, self.calls = inner, method, bad, mode, 0

    def __getattr__(self, name):
        if name != self.method:
            return getattr(self.inner, name)

        def call(texts):
            self.calls += 1
            if self.mode == "raise" and self.bad & set(texts):
                raise RuntimeError("cannot handle this text")
            out = getattr(self.inner, name)(texts)
            return [math.nan if t in self.bad else v for t, v in zip(texts, out, strict=True)]

        return call


@pytest.mark.parametrize("mode, error", [("raise", "RuntimeError: cannot handle this text"),
                                         ("nan", "ValueError: toxicity scorer returned nan")])
def test_score_failure_moves_exactly_that_candidate_to_drops(batch, mode, error):
    stage = ScoreToxicity(cfg().toxicity)
    stage.scorer = _FailsOn(stage.scorer, "score", {BAD}, mode)
    out = stage(batch)
    cands, drops = out.column(CANDIDATES).to_pylist(), out.column(DROPS).to_pylist()
    assert [[c["text"] for c in row] for row in cands] == [
        [c["text"] for c in row if c["text"] != BAD] for row in batch.column(CANDIDATES).to_pylist()
    ]
    assert all(c["toxicity"] is not None for row in cands for c in row)
    assert drops[0] == [] and drops[2] == []
    (d,) = drops[1]
    assert (d["op"], d["reason"], d["text"]) == ("low_confidence", "error", BAD)
    assert d["detail"].startswith(f"toxicity: {error}")
    assert stage.scorer.calls == 1 + 3  # the batch, then each of the 3 null-scored texts alone
    assert sum(map(len, cands)) + sum(map(len, drops)) == sum(map(len, batch.column(CANDIDATES).to_pylist()))


def test_entity_failure_drops_the_candidate_and_records_a_failed_post(batch):
    bad_post = batch.column(S.POST)[2].as_py()
    stage = AnnotateEntities(cfg().ner)
    stage.tagger = _FailsOn(stage.tagger, "tag", {BAD, bad_post})
    rows = stage(batch).to_pylist()
    assert [len(r[CANDIDATES]) for r in rows] == [2, 1, 0]
    assert all(c["entities"] is not None for r in rows for c in r[CANDIDATES])
    assert rows[2][POST_ENTITIES] == [] and rows[2][SUMMARY_ENTITIES]  # the row stays, its post has []
    assert [(d["op"], d["reason"], d["text"]) for d in rows[1][DROPS]] == [("low_confidence", "error", BAD)]
    assert rows[1][DROPS][0]["detail"] == "ner: RuntimeError: cannot handle this text"
    (post_drop,) = rows[2][DROPS]
    assert (post_drop["op"], post_drop["reason"], post_drop["text"]) == ("ner", "error", None)
    assert post_drop["detail"] == "ner: post: RuntimeError: cannot handle this text"
    assert rows[0][DROPS] == []


def test_empty_batch_and_missing_columns():
    empty = pa.Table.from_pylist([], schema=S.SOURCE_SCHEMA)
    for stage in (AnnotateEntities(cfg().ner), ScoreToxicity(cfg().toxicity)):
        out = stage(empty)
        assert out.num_rows == 0 and {CANDIDATES, DROPS, POST_ENTITIES, SUMMARY_ENTITIES} <= set(out.column_names)
