"""SummaC-style faithfulness (SPEC §7) with the tiny ALBERT NLI classifier, and entity precision."""

import math

import pytest
import torch

from raydebias.scoring.faithfulness import (
    EntityPrecision,
    NLIFaithfulness,
    entailment_index,
    split_sentences,
    summac_aggregate,
    windows,
)

POST = ("Greg borrowed my car in May. He crashed it on the highway. The insurance will not pay. "
        "Now he refuses to talk to me. I do not know what to do.")
SUMMARY = "Greg crashed my car. He will not pay for it."


def test_sentences_and_two_sentence_windows_with_stride_two():
    sents = split_sentences(POST)
    assert len(sents) == 5 and sents[0] == "Greg borrowed my car in May." and sents[-1].startswith("I do not")
    assert windows(sents) == [" ".join(sents[0:2]), " ".join(sents[2:4]), sents[4]]
    assert windows(sents[:4]) == [" ".join(sents[0:2]), " ".join(sents[2:4])]
    assert windows(sents[:1]) == [sents[0]]
    assert windows([]) == [] and split_sentences("  ") == []


def test_aggregate_max_over_windows_mean_over_sentences_and_the_band_rule():
    m = [[0.9, 0.1], [0.2, 0.3]]  # 2 windows x 2 sentences: best windows 0.9 and 0.3 -> mean 0.6
    assert summac_aggregate(m, whole=None) == pytest.approx(0.6)
    assert summac_aggregate(m, whole=0.65) == pytest.approx(0.65)  # 0.6 in (0.3, 0.7): max(0.6, whole)
    assert summac_aggregate(m, whole=0.1) == pytest.approx(0.6)  # the whole pair never lowers it
    high = [[0.9, 0.8]]
    assert summac_aggregate(high, whole=0.99) == pytest.approx(0.85)  # outside the band: untouched
    low = [[0.1, 0.3]]
    assert summac_aggregate(low, whole=0.99) == pytest.approx(0.2)
    assert summac_aggregate(m, whole=0.69, band=(0.7, 0.9)) == pytest.approx(0.6)


def test_entailment_label_is_found_by_name_or_config():
    assert entailment_index({0: "SUPPORTS", 1: "REFUTES", 2: "NOT ENOUGH INFO"}) == 0
    assert entailment_index({"0": "contradiction", "1": "neutral", "2": "entailment"}) == 2
    assert entailment_index({0: "LABEL_0", 1: "LABEL_1"}, "label_1") == 1
    with pytest.raises(ValueError, match="nli_entailment_label"):
        entailment_index({0: "LABEL_0", 1: "LABEL_1"})
    with pytest.raises(ValueError, match="not a label"):
        entailment_index({0: "SUPPORTS"}, "entailment")


def test_nli_scorer_matches_an_independent_computation_with_the_tiny_classifier():
    from raydebias.models import load_model

    scorer = NLIFaithfulness("tiny:albert-nli")
    model, tok = load_model("tiny:albert-nli", "sequence_classification")
    sents, wins = split_sentences(SUMMARY), windows(split_sentences(POST))

    def p(premise, hyp):
        enc = tok(premise, hyp, return_tensors="pt", truncation="only_first")
        with torch.no_grad():
            return torch.softmax(model(**enc).logits, -1)[0, 0].item()  # SUPPORTS

    per_sentence = [max(p(w, s) for w in wins) for s in sents]
    expected = sum(per_sentence) / len(per_sentence)
    if 0.3 < expected < 0.7:
        expected = max(expected, p(POST, SUMMARY))
    got = scorer.score([POST, "One sentence only."], [SUMMARY, "Nothing in here."])
    assert got[0] == pytest.approx(expected, abs=1e-5)
    assert 0.0 <= got[1] <= 1.0
    # an empty summary scores 0 (it states nothing the post supports), not NaN that a mean would drop;
    # NaN is left for what is undefined: a non-empty summary against an empty source
    assert scorer.score([POST, POST, ""], ["", " \n ", SUMMARY])[:2] == [0.0, 0.0]
    assert math.isnan(scorer.score([""], [SUMMARY])[0])


def test_entity_precision_counts_summary_entities_found_in_the_post():
    ep = EntityPrecision("tiny:spacy-ner")
    from support import ents

    summary = "Greg crashed my car in Paris."
    found = {e["text"] for e in ents(summary)}
    assert "Greg" in found, "the tiny NER should tag Greg"
    got = ep.score([POST, POST], [summary, "my car is broken"])
    in_post = sum(t.lower() in POST.lower() for t in found) / len(found)
    assert got[0] == pytest.approx(in_post)
    assert "Paris" in found and got[0] < 1.0  # Paris is not in the post
    assert math.isnan(got[1])  # a non-empty summary without entities: undefined (counted as missing)
    assert ep.score([POST, POST], ["", "   "]) == [0.0, 0.0]  # an empty summary: 0, counted in the mean


def test_nanmean_std_says_how_many_values_it_left_out():
    from raydebias.scoring.faithfulness import nanmean_std

    m, s, n, missing = nanmean_std([0.0, 1.0, float("nan"), None])
    assert (m, s, n, missing) == (0.5, 0.5, 2, 2)
    m, s, n, missing = nanmean_std([None])
    assert math.isnan(m) and (n, missing) == (0, 1)
