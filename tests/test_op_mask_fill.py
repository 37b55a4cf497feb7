"""raydebias.augment.mask_fill on plain Arrow tables (no Ray), with the kit's tiny RoBERTa MLM.

The tiny model is random, so fills are gibberish: the tests check where the text changed (exactly the
masked entity tokens, or ~15% of the word tokens when there is no entity), that the rest of the summary
is untouched, and the op's other promises (differs from the reference, seeded, input untouched,
truncation, resampling, per-row fault isolation).
"""

import json
from pathlib import Path

import pytest
import torch

from raydebias.augment.candidates import SUMMARY_ENTITIES
from raydebias.augment.mask_fill import MAX_ATTEMPTS, MaskFill
from raydebias.config import load_config

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "raydebias/samples/tldr/train/carper-a.jsonl"
from support import ents as support_ents  # noqa: E402
from support import norm, op_table  # noqa: E402, F401
from support import sample_rows as support_rows  # noqa: E402

BOOM = "Boomtown"


def cfg():
    return load_config(REPO / "jobs/configs/smoke.yaml", ["augment.mask_fill.max_variations=2"]).augment


@pytest.fixture(scope="module")
def sample_rows():
    rows = support_rows(3)
    assert all(len(r[SUMMARY_ENTITIES]) >= 2 for r in rows[:2])  # the tests below rely on entities
    return rows


@pytest.fixture(scope="module")
def op():
    return MaskFill(cfg().mask_fill, seed=0)


def rebuild(ref, spans):
    for s in reversed(spans):
        ref = ref[: s["start"]] + s["fill"] + ref[s["end"]:]
    return ref


def check_entity_candidate(ref, ents_, cand, max_swaps):
    info = json.loads(cand["info"])
    spans = info["masked"]
    assert info["mode"] == "entity" and spans
    assert rebuild(ref, spans) == cand["text"]  # the reference with exactly these spans replaced
    assert cand["text"].startswith(ref[: spans[0]["start"]]) and cand["text"].endswith(ref[spans[-1]["end"]:])
    assert all(a["end"] <= b["start"] for a, b in zip(spans, spans[1:], strict=False))
    masked_entities = 0
    for s in spans:
        assert s["original"] == ref[s["start"]:s["end"]]
        inside = [e for e in ents_ if s["start"] <= e["start"] and e["end"] <= s["end"]]
        assert inside, f"span {s} covers no entity of {ref!r}"
        # the span is the entity's tokens plus the whitespace before it, nothing more
        assert ref[s["start"]:inside[0]["start"]].strip() == ""
        assert not any(ch.isspace() for ch in ref[inside[-1]["end"]:s["end"]])
        assert sorted(s["labels"]) == sorted(e["label"] for e in inside)
        masked_entities += len(inside)
    assert masked_entities == min(max_swaps, len(ents_))
    assert norm(cand["text"]) != norm(ref)


def test_entity_tokens_are_refilled_and_the_rest_is_untouched(op, sample_rows):
    batch = op_table(sample_rows[:2])
    before = batch.to_pylist()
    out = op(batch).to_pylist()
    assert batch.to_pylist() == before and "candidates" not in batch.column_names  # input untouched
    assert [r["id"] for r in out] == [r["id"] for r in sample_rows[:2]]
    for row in out:
        cands = row["candidates"]
        assert 1 <= len(cands) <= 2 and all(c["op"] == "mask_fill" and c["positive"] is False for c in cands)
        assert len(cands) + len([d for d in row["drops"] if d["reason"] == "same_as_reference"]) >= 2
        assert len({norm(c["text"]) for c in cands}) == len(cands)
        for c in cands:
            check_entity_candidate(row["summary"], row[SUMMARY_ENTITIES], c, max_swaps=cfg().mask_fill.max_swaps)


def test_without_entities_a_mask_ratio_of_word_tokens_is_refilled(op, sample_rows):
    row = dict(sample_rows[2], summary_entities=[])
    (out,) = op(op_table([row])).to_pylist()
    ref = row["summary"]
    n_tokens = len(op.tokenizer(ref, add_special_tokens=False)["input_ids"])
    assert n_tokens >= 20
    assert out["candidates"]
    for c in out["candidates"]:
        info = json.loads(c["info"])
        assert info["mode"] == "random_tokens"
        assert info["tokens_masked"] == max(1, round(0.15 * n_tokens))
        assert rebuild(ref, info["masked"]) == c["text"] and norm(c["text"]) != norm(ref)
        assert all(any(ch.isalnum() for ch in s["original"]) for s in info["masked"])  # words, not punctuation


def test_same_seed_reproduces_and_another_seed_differs(op, sample_rows, monkeypatch):
    batch = op_table(sample_rows)
    first = op(batch).to_pylist()
    assert MaskFill(cfg().mask_fill, seed=0)(batch).to_pylist() == first
    monkeypatch.setattr(op, "seed", 1)  # same models, another seed
    other = op(batch).to_pylist()
    texts = lambda rows: [c["text"] for r in rows for c in r["candidates"]]  # noqa: E731
    assert texts(other) != texts(first)


def test_over_long_summary_masks_only_what_fits(op, sample_rows):
    filler = " ".join(["and then we talked about it again"] * 100)
    summary = f"{sample_rows[0]['summary']} {filler} Later Greg Tolliver called from Denver."
    row = dict(sample_rows[0], id="long", summary=summary, summary_entities=support_ents(summary))
    enc = op.tokenizer(summary, return_offsets_mapping=True)
    assert len(enc["input_ids"]) > op.max_len == 512  # RoBERTa would fail on it untruncated
    cut = op.tokenizer(summary, truncation=True, max_length=op.max_len, return_offsets_mapping=True)
    last_char = max(e for _, e in cut["offset_mapping"])
    (out,) = op(op_table([row])).to_pylist()
    assert not [d for d in out["drops"] if d["reason"] == "error"], out["drops"]
    assert out["candidates"]
    fitting = [e for e in row[SUMMARY_ENTITIES] if e["end"] <= last_char]
    assert len(fitting) < len(row[SUMMARY_ENTITIES])
    for c in out["candidates"]:
        assert all(s["end"] <= last_char for s in json.loads(c["info"])["masked"])
        check_entity_candidate(summary, fitting, c, max_swaps=cfg().mask_fill.max_swaps)


def test_special_tokens_are_never_sampled(op, monkeypatch):
    # Top-k over the whole vocabulary: 1500 draws from a random model hit <s>/<pad>/<mask>/... unless banned.
    monkeypatch.setattr(op.cfg, "top_k", 10**6)
    ids = op.tokenizer("I paid the rent to my landlord")["input_ids"]
    out = op._fill([ids] * 1500, [[2]] * 1500, torch.Generator().manual_seed(0))
    picked = {o[2] for o in out}
    assert len(picked) > 100  # it really sampled across the vocabulary
    assert not picked & set(op.tokenizer.all_special_ids)
    assert all(o[:2] == ids[:2] and o[3:] == ids[3:] for o in out)  # only the masked position changes


class Restoring(MaskFill):
    """A "model" that always puts the original tokens back."""

    def _fill(self, seqs, masked, gen):
        return [list(s) for s in seqs]


def test_fills_equal_to_the_reference_are_resampled_then_dropped(sample_rows):
    (out,) = Restoring(cfg().mask_fill, seed=0)(op_table(sample_rows[:1])).to_pylist()
    assert out["candidates"] == []
    drops = out["drops"]
    assert [d["reason"] for d in drops] == ["same_as_reference"] * (2 * MAX_ATTEMPTS)  # 2 variations
    assert sorted(d["detail"] for d in drops) == sorted(f"attempt {a}/{MAX_ATTEMPTS}"
                                                        for a in range(1, MAX_ATTEMPTS + 1) for _ in range(2))
    assert all(norm(d["text"]) == norm(sample_rows[0]["summary"]) for d in drops)


class Boom(MaskFill):
    """Fails at the model boundary whenever the batch holds the BOOM row."""

    def _fill(self, seqs, masked, gen):
        if any(BOOM in t for t in self.tokenizer.batch_decode(seqs)):
            raise RuntimeError("masked LM crashed")
        return super()._fill(seqs, masked, gen)


def test_failing_row_yields_an_error_drop_and_others_keep_candidates(sample_rows):
    bad = dict(sample_rows[2], id="bad", summary=f"{BOOM} is where my landlord kept the deposit.",
               summary_entities=[])
    out = Boom(cfg().mask_fill, seed=0)(op_table([sample_rows[0], bad, sample_rows[1]])).to_pylist()
    assert [r["id"] for r in out] == [sample_rows[0]["id"], "bad", sample_rows[1]["id"]]
    assert out[1]["candidates"] == []
    assert [(d["op"], d["reason"]) for d in out[1]["drops"]] == [("mask_fill", "error")]
    assert "masked LM crashed" in out[1]["drops"][0]["detail"]
    for row in (out[0], out[2]):
        assert row["candidates"] and not [d for d in row["drops"] if d["reason"] == "error"]
