import pyarrow as pa

from raydebias.augment.candidates import candidate, drop, entity
from raydebias.augment.clean import AUGMENTED_SCHEMA, Finalize, add_reference, clean_row, strip_scaffolding
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


def test_finalize_emits_the_declared_schema_and_add_reference_prepends():
    batch = pa.table({"id": ["a"], "post": [POST], "summary": [SUMMARY], "subreddit": [None], "title": [None]})
    batch = add_reference(batch)
    assert batch.column("candidates").to_pylist()[0][0]["op"] == "reference"
    out = Finalize(AugmentConfig())(batch)
    assert out.schema.equals(AUGMENTED_SCHEMA)
    assert out.to_pylist()[0]["positives"][0]["text"] == SUMMARY
