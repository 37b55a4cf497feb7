import random

import pyarrow as pa

from raydebias.augment.candidates import entity
from raydebias.augment.entity_swap import EntitySwap, swap_variations
from raydebias.config import AugmentConfig

POST = "Gregory Helms came to Denver with Mark in June. He took $40 and later $30 from me in Boulder."
SUMMARY = "Gregory Helms stole $40 from me in Denver."


def ents(text, spans):
    out = []
    for surface, label in spans:
        i = text.index(surface)
        out.append(entity(i, i + len(surface), label, surface))
    return out


POST_E = ents(POST, [("Gregory Helms", "PERSON"), ("Denver", "GPE"), ("Mark", "PERSON"), ("June", "DATE"),
                     ("$40", "MONEY"), ("$30", "MONEY"), ("Boulder", "GPE")])
SUM_E = ents(SUMMARY, [("Gregory Helms", "PERSON"), ("$40", "MONEY"), ("Denver", "GPE")])


def test_swaps_use_same_label_post_entities_and_never_noop():
    out = swap_variations(SUMMARY, SUM_E, POST_E, max_swaps=2, max_variations=3, rng=random.Random(0))
    assert 1 <= len(out) <= 3
    assert len({t for t, _ in out}) == len(out)
    post_by_label = {(e["text"], e["label"]) for e in POST_E}
    for text, swaps in out:
        assert text != SUMMARY and 1 <= len(swaps) <= 2
        for s in swaps:
            assert (s["to"], s["label"]) in post_by_label  # same label, taken from the post
            assert s["to"] != s["from"]
            assert s["to"] in text
        # applying the recorded swaps to the reference reproduces the candidate exactly
        rebuilt, shift = SUMMARY, 0
        for s in sorted(swaps, key=lambda s: s["start"]):
            rebuilt = rebuilt[: s["start"] + shift] + s["to"] + rebuilt[s["end"] + shift:]
            shift += len(s["to"]) - (s["end"] - s["start"])
        assert rebuilt == text


def test_op_on_a_batch_records_rows_without_swaps():
    batch = pa.table({"id": ["a", "b"], "post": [POST, "Nothing named here at all."],
                      "summary": [SUMMARY, "Nothing named."], "subreddit": [None, None], "title": [None, None],
                      "post_entities": [POST_E, []], "summary_entities": [SUM_E, []]})
    before = batch.to_pylist()
    out = EntitySwap(AugmentConfig().entity_swap, seed=1)(batch).to_pylist()
    assert batch.to_pylist() == before  # input untouched
    assert [c["op"] for c in out[0]["candidates"]] == ["entity_swap"] * len(out[0]["candidates"])
    assert 1 <= len(out[0]["candidates"]) <= 3 and not out[0]["drops"]
    assert out[1]["candidates"] == [] and [d["reason"] for d in out[1]["drops"]] == ["no_swappable_entity"]
    # deterministic by seed
    assert EntitySwap(AugmentConfig().entity_swap, seed=1)(batch).to_pylist() == out


def test_max_variations_and_swaps_are_respected():
    cfg = AugmentConfig()
    cfg.entity_swap.max_variations, cfg.entity_swap.max_swaps = 1, 1
    out = swap_variations(SUMMARY, SUM_E, POST_E, max_swaps=1, max_variations=1, rng=random.Random(3))
    assert len(out) == 1 and len(out[0][1]) == 1
