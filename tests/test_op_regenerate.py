"""raydebias.augment.regenerate on plain Arrow tables (no Ray), with the kit's tiny FLAN-T5.

The tiny model is random: it rarely emits a second sentinel, so most tests mask one span
(``max_swaps=1``), where the forced ``<extra_id_0>`` decoder prefix makes its output parseable. The
tests check where the summary changed (exactly the masked span), that the rest is kept, the T5 span
format parsing with the tokenizer's own sentinels, truncation of the post only, seeding, and per-row
fault isolation, not fluency.
"""

import json
from pathlib import Path

import pytest
import torch

from raydebias.augment.candidates import SUMMARY_ENTITIES
from raydebias.augment.regenerate import INSTRUCTION, Regenerate, parse_fills
from raydebias.config import load_config

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "raydebias/samples/tldr/train/carper-a.jsonl"
from support import norm, op_table  # noqa: E402, F401
from support import sample_rows as support_rows  # noqa: E402

BOOM = "Boomtown"


def cfg(*overrides):
    return load_config(REPO / "jobs/configs/smoke.yaml",
                       ["augment.regenerate.max_new_tokens=12", "augment.regenerate.max_swaps=1", *overrides]).augment


@pytest.fixture(scope="module")
def sample_rows():
    rows = support_rows(3)
    assert all(r[SUMMARY_ENTITIES] for r in rows[:2])
    return rows


@pytest.fixture(scope="module")
def op():
    return Regenerate(cfg().regenerate, seed=0)


def check_splice(ref, cand):
    info = json.loads(cand["info"])
    (span,) = info["masked"]
    s, e = span["start"], span["end"]
    assert span["original"] == ref[s:e] and span["fill"] and span["fill"] == span["fill"].strip()
    assert cand["text"] == ref[:s] + span["fill"] + ref[e:]  # only the masked span changed
    assert norm(cand["text"]) != norm(ref)
    return info, span


def test_masked_entity_is_regenerated_and_the_rest_kept(op, sample_rows):
    batch = op_table(sample_rows[:2])
    before = batch.to_pylist()
    out = op(batch).to_pylist()
    assert batch.to_pylist() == before and "candidates" not in batch.column_names  # input untouched
    assert [r["id"] for r in out] == [r["id"] for r in sample_rows[:2]]
    n = 0
    for row in out:
        # one outcome per row: a candidate, or a drop that says why not
        assert len(row["candidates"]) + len(row["drops"]) == 1
        assert all(d["reason"] in {"empty_fill", "same_as_reference"} for d in row["drops"])
        for c in row["candidates"]:
            n += 1
            assert c["op"] == "regenerate" and c["positive"] is False
            info, span = check_splice(row["summary"], c)
            assert info["mode"] == "entity" and info["post_truncated"] is False
            spans = {(x["start"], x["end"], x["label"]) for x in row[SUMMARY_ENTITIES]}
            assert (span["start"], span["end"], span["label"]) in spans  # exactly an entity span
    assert n >= 1


def test_without_entities_a_middle_relation_span_is_regenerated(op, sample_rows):
    row = dict(sample_rows[2], summary_entities=[])
    (out,) = op(op_table([row])).to_pylist()
    assert len(out["candidates"]) == 1, out["drops"]
    info, span = check_splice(row["summary"], out["candidates"][0])
    assert info["mode"] == "relation" and span["label"] is None
    words = span["original"].split()
    assert 2 <= len(words) <= 4
    ref = row["summary"]
    assert ref[: span["start"]].split() and ref[span["end"]:].split()  # words kept on both sides


def test_two_spans_give_a_candidate_only_when_every_sentinel_is_filled(sample_rows):
    out = Regenerate(cfg("augment.regenerate.max_swaps=2").regenerate, seed=0)(op_table(sample_rows[:2])).to_pylist()
    for row in out:
        assert len(row["candidates"]) + len(row["drops"]) == 1
        for c in row["candidates"]:
            masked = json.loads(c["info"])["masked"]
            assert len(masked) == 2 and all(m["fill"] for m in masked)
        for d in row["drops"]:
            assert d["reason"] in {"empty_fill", "same_as_reference"}


def test_sentinels_come_from_the_tokenizer_and_parse(op):
    tok = op.tokenizer
    assert op.sentinels[:2] == ["<extra_id_0>", "<extra_id_1>"] and len(op.sentinels) == 100
    assert op.sentinel_ids[:2] == tok.convert_tokens_to_ids(["<extra_id_0>", "<extra_id_1>"])
    assert op.sentinel_ids[0] != 32099  # the tiny kit's ids are not real T5's: nothing may assume them
    s0, s1, s2 = op.sentinel_ids[:3]
    a, b, c, d = tok.convert_tokens_to_ids(tok.tokenize("Greg took rent"))[:4]
    eos = tok.eos_token_id
    stop = {eos}
    assert parse_fills([s0, a, b, s1, c, eos, d], op.sentinel_ids, 2, stop) == [[a, b], [c]]
    assert parse_fills([a, s0, b, eos], op.sentinel_ids, 2, stop) == [[b], None]  # no <extra_id_1>
    assert parse_fills([s0, a, s2, b, s1, c], op.sentinel_ids, 2, stop) == [[a], [c]]  # s2 ends fill 0
    assert parse_fills([s0, s1, a], op.sentinel_ids, 2, stop) == [[], [a]]
    assert parse_fills([s0, a, s0, b], op.sentinel_ids, 2, stop) == [[a], None]  # a repeat cannot overwrite


class Scripted(Regenerate):
    """The real prompt building and parsing, with a scripted answer in place of the model."""

    answer = []

    def _generate(self, prompts):
        return [list(self.answer) for _ in prompts]


@pytest.mark.parametrize("answer, reason", [("restore", "same_as_reference"), ("empty", "empty_fill"),
                                            ("none", "empty_fill")])
def test_restored_or_empty_fills_are_dropped(sample_rows, answer, reason):
    ent = sample_rows[0][SUMMARY_ENTITIES][0]
    row = dict(sample_rows[0], summary_entities=[ent])
    op = Scripted(cfg().regenerate, seed=0)
    s0, s1 = op.sentinel_ids[:2]
    words = op.tokenizer(ent["text"].upper(), add_special_tokens=False)["input_ids"]
    op.answer = {"restore": [s0, *words, s1], "empty": [s0, s1, op.tokenizer.eos_token_id], "none": []}[answer]
    (out,) = op(op_table([row])).to_pylist()
    assert out["candidates"] == []
    assert [(d["op"], d["reason"]) for d in out["drops"]] == [("regenerate", reason)]
    op.answer = [s0, *op.tokenizer("Walter Smith", add_special_tokens=False)["input_ids"], s1]
    (out,) = op(op_table([row])).to_pylist()
    assert [c["text"] for c in out["candidates"]] == [row["summary"].replace(ent["text"], "Walter Smith")]


def test_only_the_post_is_truncated(op, sample_rows):
    row = sample_rows[0]
    ent = row[SUMMARY_ENTITIES][0]
    masked = op._masked_summary(row["summary"], [ent])
    assert op.sentinels[0] in masked and ent["text"] not in masked
    long_post = " ".join([row["post"]] * 20)
    ids, cut = op._prompt_ids(long_post, masked)
    assert cut is True and len(ids) <= op.max_len and len(ids) >= op.max_len - 8
    text = op.tokenizer.decode(ids, skip_special_tokens=False)
    squash = lambda t: "".join(t.split())  # noqa: E731 - sentencepiece decoding re-spaces
    assert squash(text).startswith(squash(INSTRUCTION + "Post:" + row["post"][:50]))
    assert squash(text).endswith(squash("Summary: " + masked + "</s>"))
    ids, cut = op._prompt_ids(row["post"], masked)
    assert cut is False
    # the op runs on it: a normal outcome, no error
    (out,) = op(op_table([dict(row, post=long_post)])).to_pylist()
    assert len(out["candidates"]) + len(out["drops"]) == 1
    assert not [d for d in out["drops"] if d["reason"] == "error"], out["drops"]
    assert all(json.loads(c["info"])["post_truncated"] is True for c in out["candidates"])


def test_a_summary_too_long_to_fit_is_dropped_not_cut(op, sample_rows):
    huge = dict(sample_rows[2], id="huge", summary=" ".join([sample_rows[2]["summary"]] * 40), summary_entities=[])
    out = op(op_table([huge, sample_rows[0]])).to_pylist()
    assert out[0]["candidates"] == [] and [d["reason"] for d in out[0]["drops"]] == ["summary_too_long"]
    assert len(out[1]["candidates"]) + len(out[1]["drops"]) == 1
    assert not [d for d in out[1]["drops"] if d["reason"] == "error"]


def test_same_seed_reproduces_and_another_seed_differs(op, sample_rows, monkeypatch):
    batch = op_table(sample_rows)
    first = op(batch).to_pylist()
    assert Regenerate(cfg().regenerate, seed=0)(batch).to_pylist() == first
    monkeypatch.setattr(op, "seed", 1)  # same models, another seed
    other = op(batch).to_pylist()
    texts = lambda rows: [x["text"] for r in rows for x in r["candidates"] + r["drops"]]  # noqa: E731
    assert texts(other) != texts(first)


class Boom(Regenerate):
    """Fails at the model boundary whenever the batch holds the BOOM row."""

    def _generate(self, prompts):
        if any(BOOM in t for t in self.tokenizer.batch_decode(prompts)):
            raise RuntimeError("seq2seq model crashed")
        return super()._generate(prompts)


def test_failing_row_yields_an_error_drop_and_others_keep_candidates(sample_rows):
    bad = dict(sample_rows[2], id="bad", summary=f"{BOOM} is where my landlord kept the deposit.",
               summary_entities=[])
    out = Boom(cfg().regenerate, seed=0)(op_table([sample_rows[0], bad, sample_rows[1]])).to_pylist()
    assert [r["id"] for r in out] == [sample_rows[0]["id"], "bad", sample_rows[1]["id"]]
    assert out[1]["candidates"] == []
    assert [(d["op"], d["reason"]) for d in out[1]["drops"]] == [("regenerate", "error")]
    assert "seq2seq model crashed" in out[1]["drops"][0]["detail"]
    for row in (out[0], out[2]):
        assert len(row["candidates"]) + len(row["drops"]) == 1
        assert not [d for d in row["drops"] if d["reason"] == "error"]
    assert out[0]["candidates"] or out[2]["candidates"]
