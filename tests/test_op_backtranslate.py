"""raydebias.augment.backtranslate on plain Arrow tables (no Ray), with the kit's tiny MarianMT models.

The tiny models are random, so paraphrases are gibberish: the tests check what the op promises
(positives, one per pivot, never the reference, pivot recorded, every pivot accounted for, seeded,
input untouched, truncation, per-row fault isolation), not fluency.
"""

import json
from pathlib import Path

import pytest
import torch

from raydebias.augment.backtranslate import Backtranslate
from raydebias.config import load_config

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "raydebias/samples/tldr/train/carper-a.jsonl"
from support import norm, op_table  # noqa: E402, F401
from support import sample_rows as support_rows  # noqa: E402

BOOM = "Boomtown"  # a summary containing this word makes the model call fail (see test_failing_row...)


def cfg():
    return load_config(REPO / "jobs/configs/smoke.yaml", ["augment.backtranslate.max_new_tokens=24"]).augment


@pytest.fixture(scope="module")
def sample_rows():
    rows = support_rows(3)
    return rows


@pytest.fixture(scope="module")
def op():
    return Backtranslate(cfg().backtranslate, seed=0)


def test_paraphrases_are_positive_one_per_pivot_and_never_the_reference(op, sample_rows):
    batch = op_table(sample_rows)
    before = batch.to_pylist()
    out = op(batch).to_pylist()
    assert batch.to_pylist() == before and "candidates" not in batch.column_names  # input untouched
    assert [r["id"] for r in out] == [r["id"] for r in sample_rows]  # same rows, same order
    pivots = cfg().backtranslate.pivots
    assert pivots == ["de", "fr", "es"]
    n_cands = 0
    for row in out:
        cands = row["candidates"]
        n_cands += len(cands)
        infos = [json.loads(c["info"]) for c in cands]
        assert all(c["op"] == "backtranslate" and c["positive"] is True for c in cands)
        assert all(c["toxicity"] is None and c["entities"] is None for c in cands)  # later stages fill these
        cand_pivots = [i["pivot"] for i in infos]
        assert len(set(cand_pivots)) == len(cand_pivots) and set(cand_pivots) <= set(pivots)
        assert all(norm(c["text"]) != norm(row["summary"]) and c["text"].strip() for c in cands)
        assert len({norm(c["text"]) for c in cands}) == len(cands)
        assert all(isinstance(i["pivot_text"], str) for i in infos)
        # every pivot ends as a candidate or as a drop with a reason: nothing is skipped silently
        assert all(d["op"] == "backtranslate" and d["reason"] in {"empty", "same_as_reference", "duplicate"}
                   for d in row["drops"])
        assert len(cands) + len(row["drops"]) == len(pivots)
    assert n_cands >= 1


def test_same_seed_reproduces_and_another_seed_differs(op, sample_rows, monkeypatch):
    batch = op_table(sample_rows[:2])
    first = op(batch).to_pylist()
    again = Backtranslate(cfg().backtranslate, seed=0)(batch).to_pylist()  # a fresh actor, same seed
    assert again == first
    monkeypatch.setattr(op, "seed", 1)  # same models, another seed
    other = op(batch).to_pylist()
    texts = lambda rows: [c["text"] for r in rows for c in r["candidates"]]  # noqa: E731
    assert texts(other) != texts(first)


class ScriptedBack(Backtranslate):
    """The real en->pivot model, then a scripted pivot->en "model" that returns chosen paraphrases."""

    script = {}

    def _translate(self, model, tokenizer, texts):
        for pivot, (_, (bwd, _)) in self.models.items():
            if model is bwd:
                return [self.script[pivot]] * len(texts)
        return super()._translate(model, tokenizer, texts)


def test_reference_echo_and_repeats_become_drops(sample_rows):
    ref = sample_rows[0]["summary"]
    op = ScriptedBack(cfg().backtranslate, seed=0)
    op.script = {"de": "  " + ref.upper() + " ", "fr": "A brand new   paraphrase.", "es": "a brand NEW paraphrase."}
    (row,) = op(op_table(sample_rows[:1])).to_pylist()
    assert [(c["text"], json.loads(c["info"])["pivot"]) for c in row["candidates"]] == [("A brand new   paraphrase.", "fr")]
    assert [(d["reason"], d["text"]) for d in row["drops"]] == [
        ("same_as_reference", op.script["de"]), ("duplicate", op.script["es"])]
    assert "repeats pivot fr" in row["drops"][1]["detail"]


def test_over_long_summary_is_truncated_not_fatal(op, sample_rows):
    long = dict(sample_rows[1], id="long", summary=" ".join([sample_rows[1]["summary"]] * 120),
                summary_entities=[])
    out = op(op_table([sample_rows[0], long])).to_pylist()
    assert len(op.models["de"][0][1](long["summary"])["input_ids"]) > 512  # would overflow without truncation
    for row in out:
        assert not [d for d in row["drops"] if d["reason"] == "error"], row["drops"]
        assert len(row["candidates"]) + len(row["drops"]) == 3


class Boom(Backtranslate):
    """Fails at the model boundary whenever the batch holds the BOOM row."""

    def _translate(self, model, tokenizer, texts):
        if any(BOOM in t for t in texts):
            raise RuntimeError("translation model crashed")
        return super()._translate(model, tokenizer, texts)


def test_failing_row_yields_an_error_drop_and_others_keep_candidates(sample_rows):
    bad = dict(sample_rows[1], id="bad", summary=f"{BOOM} is where my landlord kept the deposit.",
               summary_entities=[])
    out = Boom(cfg().backtranslate, seed=0)(op_table([sample_rows[0], bad, sample_rows[2]])).to_pylist()
    assert [r["id"] for r in out] == [sample_rows[0]["id"], "bad", sample_rows[2]["id"]]
    assert out[1]["candidates"] == []
    assert [(d["op"], d["reason"]) for d in out[1]["drops"]] == [("backtranslate", "error")]
    assert "translation model crashed" in out[1]["drops"][0]["detail"]
    for row in (out[0], out[2]):
        assert not [d for d in row["drops"] if d["reason"] == "error"]
        assert len(row["candidates"]) + len(row["drops"]) == 3
    assert out[0]["candidates"] or out[2]["candidates"]
