import pyarrow as pa
import pytest

from raydebias.augment.annotate import AnnotateCandidates, AnnotateEntities, ScoreToxicity
from raydebias.augment.candidates import CANDIDATE_LIST, CANDIDATES, candidate, drop, entity, set_column
from raydebias.augment.clean import (
    AUGMENTED_SCHEMA,
    CleanCandidates,
    Finalize,
    FinalizeRules,
    add_reference,
    clean_candidates,
    clean_row,
    strip_scaffolding,
)
from raydebias.augment.pipeline import model_stages
from raydebias.augment.stage import stage_classes, stage_order
from raydebias.config import AugmentConfig

POST = "My landlord Greg in Denver kept my $1,200 deposit after I moved out in June."
SUMMARY = "Landlord Greg in Denver kept my $1,200 deposit."


def test_strip_scaffolding():
    assert strip_scaffolding("TL;DR: the actual summary here") == "the actual summary here"
    assert strip_scaffolding("Toxic rewrite:\nYou idiot landlord.\n\nOriginal text:\nmore") == "You idiot landlord."
    assert strip_scaffolding("Greg kept it all.\nSUBREDDIT: r/legaladvice\nPOST: ...") == "Greg kept it all."
    assert strip_scaffolding("plain text stays") == "plain text stays"


def _row(cands, drops=()):
    return {"id": "r1", "post": POST, "summary": SUMMARY, "subreddit": "x", "title": None,
            "candidates": [candidate(SUMMARY, "reference", positive=True)] + cands, "drops": list(drops)}


def test_clean_row_rules_and_counts():
    cfg = AugmentConfig()
    cands = [
        candidate("Landlord Greg in Denver kept the $1,200 deposit.", "backtranslate", positive=True, pivot="de"),
        candidate("Landlord Greg in Paris kept the deposit money.", "backtranslate", positive=True,
                  entities=[entity(17, 22, "GPE", "Paris")], pivot="fr"),
        candidate("TL;DR: Greg is a thief.", "low_confidence"),
        candidate("Too short", "mask_fill"),
        candidate("landlord greg in denver kept my $1,200 deposit.", "regenerate"),  # == reference
        candidate("Greg, you useless idiot, give it back.", "toxic_rewrite", toxicity=0.8),
        candidate("Greg, you useless idiot, give it back.", "toxic_rewrite", toxicity=0.8),
    ]
    out = clean_row(_row(cands, [drop("toxic_rewrite", "below_toxicity_threshold", "0.1")]), cfg)
    assert [c["op"] for c in out["positives"]] == ["reference", "backtranslate"]
    assert [c["text"] for c in out["negatives"]] == ["Greg is a thief.", "Greg, you useless idiot, give it back."]
    reasons = sorted((d["op"], d["reason"]) for d in out["drops"])
    assert reasons == sorted([("toxic_rewrite", "below_toxicity_threshold"), ("backtranslate", "novel_entity"),
                              ("mask_fill", "too_short"), ("regenerate", "same_as_positive"),
                              ("toxic_rewrite", "duplicate")])
    assert out["trainable"] is True
    # every candidate is accounted for: kept + dropped (by the cleaner) == given
    assert len(out["positives"]) + len(out["negatives"]) + len(out["drops"]) - 1 == len(cands) + 1


def test_untrainable_when_fewer_than_two_positives():
    out = clean_row(_row([candidate("Greg is a thief and a liar.", "low_confidence")]), AugmentConfig())
    assert out["trainable"] is False and len(out["positives"]) == 1


def _tiny_cfg() -> AugmentConfig:
    c = AugmentConfig()
    c.ner.model = "tiny:spacy-ner"
    c.toxicity.model = "tiny:toxic-bert"
    return c


def _source_batch() -> pa.Table:
    return add_reference(pa.table({"id": ["a"], "post": [POST], "summary": [SUMMARY], "subreddit": [None],
                                   "title": [None]}))


def test_finalize_emits_the_declared_schema_and_add_reference_prepends():
    cfg = _tiny_cfg()
    batch = _source_batch()
    assert batch.column("candidates").to_pylist()[0][0]["op"] == "reference"
    for stage in (CleanCandidates(cfg.min_words), AnnotateEntities(cfg.ner), ScoreToxicity(cfg.toxicity)):
        batch = stage(batch)
    out = Finalize(FinalizeRules.from_config(cfg))(batch)
    assert out.schema.equals(AUGMENTED_SCHEMA)
    assert out.to_pylist()[0]["positives"][0]["text"] == SUMMARY


def test_finalize_refuses_a_candidate_that_was_not_scored_on_its_text():
    with pytest.raises(RuntimeError, match="without toxicity"):
        Finalize(FinalizeRules.from_config(AugmentConfig()))(_source_batch())  # scoring never ran
    cand = candidate("Greg kept it all, that thief.", "low_confidence", toxicity=0.3,
                     entities=[entity(0, 4, "PERSON", "Gregory")])  # a span of another text
    batch = set_column(_source_batch(), CANDIDATES, [[candidate(SUMMARY, "reference", positive=True, toxicity=0.1,
                                                                entities=[]), cand]], CANDIDATE_LIST)
    with pytest.raises(RuntimeError, match="does not index its text"):
        Finalize(FinalizeRules.from_config(AugmentConfig()))(batch)


def test_cleaning_runs_before_annotation_and_scoring_in_the_pipeline():
    cfg = AugmentConfig()
    order = stage_order(cfg)
    assert order.index("clean") > max(order.index(op) for op in cfg.ops)
    assert order.index("clean") < order.index("ner_candidates") < order.index("toxicity")
    assert "clean" not in model_stages(cfg) and set(order) - {"clean"} == set(model_stages(cfg))
    assert set(order) <= set(stage_classes())


def test_stripped_candidate_keeps_spans_and_toxicity_of_its_final_text():
    """An op's scores of the raw (echoed-label) text are reset by cleaning and recomputed on the stored text."""
    cfg = _tiny_cfg()
    raw = "TL;DR: Greg in Denver kept my deposit, the thief."
    stale = [entity(7, 11, "PERSON", "Greg")]  # indexes the raw text, not the stripped one
    batch = set_column(_source_batch(), CANDIDATES, [[
        candidate(SUMMARY, "reference", positive=True),
        candidate(raw, "low_confidence", toxicity=0.99, entities=stale),
        candidate("Greg in Denver kept my deposit and laughed.", "mask_fill", toxicity=0.5,
                  entities=[entity(0, 4, "PERSON", "Greg")]),  # nothing to strip: the op's scores stay
    ]], CANDIDATE_LIST)
    cleaned = CleanCandidates(cfg.min_words)(batch)
    by_op = {c["op"]: c for c in cleaned.column(CANDIDATES).to_pylist()[0]}
    assert by_op["low_confidence"]["text"] == raw.removeprefix("TL;DR: ")
    assert by_op["low_confidence"]["toxicity"] is None and by_op["low_confidence"]["entities"] is None
    assert by_op["mask_fill"]["toxicity"] == 0.5 and by_op["mask_fill"]["entities"] is not None

    ner, tox = AnnotateCandidates.from_config(cfg), ScoreToxicity.from_config(cfg)
    out = Finalize(FinalizeRules.from_config(cfg))(tox(ner(cleaned))).to_pylist()[0]
    kept = {c["op"]: c for c in out["positives"] + out["negatives"]}
    final = kept["low_confidence"]
    assert final["text"] == "Greg in Denver kept my deposit, the thief."
    assert final["entities"] and final["entities"] == ner.tagger.tag([final["text"]])[0]
    for e in final["entities"]:
        assert final["text"][e["start"]:e["end"]] == e["text"]
    assert final["toxicity"] == pytest.approx(tox.scorer.score([final["text"]])[0], abs=1e-6)
    assert final["toxicity"] != pytest.approx(0.99)


def test_toxic_rewrite_is_kept_iff_its_final_text_is_toxic():
    cfg = AugmentConfig()
    row = _row([
        candidate("Summary: Greg, you useless idiot, give it back.", "toxic_rewrite", toxicity=0.9),
        candidate("Greg, you absolute clown, pay me back.", "toxic_rewrite", toxicity=0.7),
    ])
    cands, _ = clean_candidates(row, cfg.min_words)
    assert [c["toxicity"] for c in cands if c["op"] == "toxic_rewrite"] == [None, 0.7]

    def score(cands):  # the stripped text is re-scored, and now falls below the threshold
        for c in cands:
            c["toxicity"] = 0.1 if c["toxicity"] is None else c["toxicity"]
            c["entities"] = [] if c["entities"] is None else c["entities"]

    out = clean_row(row, cfg, score=score)
    assert [c["text"] for c in out["negatives"]] == ["Greg, you absolute clown, pay me back."]
    (d,) = [d for d in out["drops"] if d["op"] == "toxic_rewrite"]
    assert d["reason"] == "below_toxicity_threshold" and "after cleaning" in d["detail"]


def test_a_negative_equal_to_a_filtered_backtranslation_is_kept():
    """same_as_positive is decided against the positives that survive CLIFF's filter."""
    text = "Landlord Greg in Paris kept the deposit money."
    row = _row([candidate(text, "backtranslate", positive=True, entities=[entity(17, 22, "GPE", "Paris")]),
                candidate(text, "regenerate", entities=[entity(17, 22, "GPE", "Paris")])])
    out = clean_row(row, AugmentConfig())
    assert [c["op"] for c in out["negatives"]] == ["regenerate"]
    assert sorted((d["op"], d["reason"]) for d in out["drops"]) == [("backtranslate", "novel_entity")]
