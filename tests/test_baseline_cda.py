"""CDA baseline: attribute word lists, two-sided counterfactuals, the CDA corpus and run_clm's group_texts."""

import json
import random

import pytest

from raydebias.baselines import attributes, cda
from raydebias.baselines.attributes import (
    ATTRIBUTES,
    attribute_classes,
    attribute_words,
    find_attribute_words,
    swap_entries,
)
from raydebias.baselines.cda import cda_corpus, counterfactual, group_texts


def _last_entry(attribute, word):
    """Independent of swap_entries: scan the list backwards, the first hit is the last listed entry."""
    for entry in reversed(attribute_words(attribute)):
        if word in entry:
            return entry
    raise AssertionError(word)


def _bias_bench_gender(sentence, pairs):
    """bias-bench run_clm.py gender_counterfactual_augmentation on one lower-case, punctuation-free sentence."""
    words = sentence.split()
    out = words[:]
    for position, word in enumerate(words):
        for male, female in pairs:
            if male == word:
                out[position] = female
            if female == word:
                out[position] = male
    return " ".join(out)


# ---------------------------------------------------------------- word lists


def test_list_sizes_follow_bias_bench():
    assert len(attribute_words("gender")) == 57
    assert len(attribute_words("race")) == 6
    assert len(attribute_words("religion")) == 6
    assert all(len(e) == 2 for e in attribute_words("gender"))
    assert all(len(e) == 3 for a in ("race", "religion") for e in attribute_words(a))
    for a in ATTRIBUTES:
        for entry in attribute_words(a):
            assert all(w == w.lower().strip() and w for w in entry)
            assert len(set(entry)) == len(entry)
    assert ("he", "she") in attribute_words("gender")
    assert ("his", "her") in attribute_words("gender")
    assert attribute_words("religion")[0] == ("jewish", "christian", "muslim")
    assert attribute_words("race")[0] == ("black", "caucasian", "asian")


def test_json_cites_its_source_and_holds_only_the_three_attributes():
    raw = json.loads(attributes.WORDS_FILE.read_text())
    assert "bias-bench" in raw["_source"] and "bias_attribute_words.json" in raw["_source"]
    assert sorted(k for k in raw if not k.startswith("_")) == sorted(ATTRIBUTES)
    assert "bias-bench" in attributes.__doc__


def test_words_in_two_entries_are_exactly_the_documented_ones():
    """bias-bench's list is not one-to-one; the words shared between entries are the ones the docstring names
    and resolves (last entry wins). Every other word is in exactly one entry."""
    documented = {
        "gender": {"her", "girl", "girls", "lady", "ladies", "guy", "guys", "sir", "mr."},
        "race": {"black", "caucasian", "asian", "africa", "america", "asia"},
        "religion": set(),
    }
    for a in ATTRIBUTES:
        seen = {}
        for entry in attribute_words(a):
            for w in entry:
                seen[w] = seen.get(w, 0) + 1
        assert {w for w, n in seen.items() if n > 1} == documented[a], a
        # the resolution picks the last listed entry, for every word
        for w, (entry, position) in swap_entries(a).items():
            assert entry == _last_entry(a, w)
            assert entry[position] == w


def test_classes_group_by_entry_position_and_are_disjoint():
    g = attribute_classes("gender")
    assert list(g) == ["male", "female"]
    assert "he" in g["male"] and "she" in g["female"] and "her" in g["female"]
    assert len(g["male"]) == len({e[0] for e in attribute_words("gender")})
    r = attribute_classes("race")
    assert r == {"black": ["black", "african", "africa"], "caucasian": ["caucasian", "white", "america", "europe"],
                 "asian": ["asian", "asia", "china"]}
    rel = attribute_classes("religion")
    assert list(rel) == ["jewish", "christian", "muslim"]
    assert rel["muslim"] == ["muslim", "muslims", "quran", "mosque", "imam", "islam"]
    for a in ATTRIBUTES:
        groups = [set(ws) for ws in attribute_classes(a).values()]
        for i in range(len(groups)):
            for j in range(i + 1, len(groups)):
                assert not groups[i] & groups[j], a
        assert set().union(*groups) == {w for e in attribute_words(a) for w in e}


def test_unknown_attribute_names_the_known_ones():
    for fn in (attribute_words, attribute_classes, lambda a: find_attribute_words("x", a),
               lambda a: counterfactual("x", a, random.Random(0)), lambda a: cda_corpus(["x"], a)):
        with pytest.raises(ValueError, match=r"'age'.*gender, race, religion"):
            fn("age")


def test_find_attribute_words_whole_word_case_insensitive():
    text = "He met the HERO; her brother, Mr. Smith, thanked HIM (and them)."
    assert find_attribute_words(text, "gender") == ["he", "her", "brother", "mr.", "him"]
    assert find_attribute_words("Theologians hello there", "gender") == []
    assert find_attribute_words("Jews, Muslims and a church.", "religion") == ["jews", "muslims", "church"]


# ---------------------------------------------------------------- counterfactual


def test_gender_swap_is_two_sided_in_one_pass():
    s = "He said she would call his brother."
    assert counterfactual(s, "gender") == "She said he would call her sister."
    assert counterfactual("she and he", "gender") == "he and she"


def test_gender_twice_returns_original_for_one_to_one_words():
    s = "The king told his daughter that she and her husband, a businessman, were his heirs."
    once = counterfactual(s, "gender")
    assert once == "The queen told her son that he and his wife, a businesswoman, were her heirs."
    assert counterfactual(once, "gender") == s


def test_gender_ambiguous_words_follow_bias_bench_last_entry():
    assert counterfactual("ask her", "gender") == "ask his"
    assert counterfactual(counterfactual("ask him", "gender"), "gender") == "ask his"  # documented: no involution
    # every gender word alone, against bias-bench's own loop (lower case, no punctuation: where both agree)
    pairs = attribute_words("gender")
    for w in {x for e in pairs for x in e}:
        s = f"a {w} b"
        assert counterfactual(s, "gender") == _bias_bench_gender(s, pairs), w


def test_whole_word_only():
    s = "The theme: hello, Sherlock, the shepherd's heroes mishear others."
    assert counterfactual(s, "gender") == s
    assert counterfactual("he2 she_x _he", "gender") == "he2 she_x _he"
    assert counterfactual("the", "gender") == "the"


def test_case_and_punctuation_preserved():
    assert counterfactual("He, HE, he.", "gender") == "She, SHE, she."
    assert counterfactual("Give it to him, please!", "gender") == "Give it to her, please!"
    assert counterfactual("(his) 'he' he's step-father", "gender") == "(her) 'she' she's step-mother"
    assert counterfactual("MR. Smith and Mr. Jones", "gender") == "MS. Smith and Ms. Jones"
    assert counterfactual("Yes, Ma'am.", "gender") == "Yes, Sir."


def test_text_without_attribute_words_is_unchanged():
    s = "A quiet afternoon in the park, with the hero's theme playing."
    for a in ATTRIBUTES:
        assert counterfactual(s, a, random.Random(3)) == s


@pytest.mark.parametrize("attribute", ["race", "religion"])
def test_ternary_replacement_is_another_member_and_covers_both(attribute):
    for w in swap_entries(attribute):
        entry = _last_entry(attribute, w)
        others = set(entry) - {w}
        got = set()
        for seed in range(40):
            out = counterfactual(f"the {w} one", attribute, random.Random(seed))
            new = out.split()[1]
            assert new in others, (w, out)
            got.add(new)
        assert got == others, w


def test_ternary_is_consistent_within_one_text_and_keeps_case():
    for seed in range(20):
        out = counterfactual("Jews. The synagogue and its Rabbi; JUDAISM", "religion", random.Random(seed))
        assert out in ("Christians. The church and its Priest; CHRISTIANITY",
                       "Muslims. The mosque and its Imam; ISLAM"), out


def test_ternary_needs_an_rng_and_is_deterministic_for_it():
    with pytest.raises(ValueError, match="rng"):
        counterfactual("black", "race")
    a = [counterfactual("jewish muslim christian", "religion", random.Random(7)) for _ in range(3)]
    assert a[0] == a[1] == a[2]


# ---------------------------------------------------------------- corpus


def test_cda_corpus_keeps_originals_beside_counterfactuals_and_counts_add_up():
    texts = ["He went home.\nThe sky is blue.\n\nShe left.", "Nothing here.", "His king spoke."]
    out, counts = cda_corpus(texts, "gender")
    assert out == ["He went home.", "She went home.", "She left.", "He left.", "His king spoke.",
                   "Her queen spoke."]
    assert counts == {"texts_in": 3, "lines": 5, "with_attribute_words": 3, "without_attribute_words": 2,
                      "augmented": 3, "texts_out": 6}
    assert counts["with_attribute_words"] + counts["without_attribute_words"] == counts["lines"]
    assert counts["texts_out"] == 2 * counts["augmented"] == len(out)
    kept, kc = cda_corpus(texts, "gender", keep_unmatched=True)
    assert kc["texts_out"] == len(kept) == 2 * kc["augmented"] + kc["without_attribute_words"] == 8
    assert "The sky is blue." in kept and "Nothing here." in kept


def test_cda_corpus_is_deterministic_per_seed_for_ternary():
    texts = [f"line {i}: the jews and the mosque" for i in range(30)]
    a, ca = cda_corpus(texts, "religion", seed=1)
    b, _ = cda_corpus(texts, "religion", seed=1)
    c, _ = cda_corpus(texts, "religion", seed=2)
    assert a == b and a != c
    assert ca["augmented"] == 30 and len(a) == 60
    for i in range(30):
        assert a[2 * i] == texts[i]
        assert a[2 * i + 1] != texts[i] and a[2 * i + 1].startswith(f"line {i}: the ")


def test_cda_corpus_rejects_a_bare_string_and_non_strings():
    with pytest.raises(ValueError, match="one str"):
        cda_corpus("he", "gender")
    with pytest.raises(ValueError, match="text 1"):
        cda_corpus(["he", 3], "gender")


# ---------------------------------------------------------------- group_texts and recipe


def test_group_texts_matches_hand_computed_chunks():
    ids = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    assert group_texts(ids, 4) == [[1, 2, 3, 4], [5, 6, 7, 8]]  # 9 is the dropped remainder
    assert group_texts(ids, 3) == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert group_texts(ids, 1) == [[i] for i in range(1, 10)]
    assert group_texts(ids, 10) == []
    assert group_texts([], 4) == []
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="block_size"):
            group_texts(ids, bad)


def test_recipe_constants_are_bias_bench_defaults():
    assert (cda.STEPS, cda.EFFECTIVE_BATCH, cda.BLOCK_SIZE, cda.LR) == (2000, 8 * 32, 1024, 5e-5)


def test_counterfactual_versions_give_one_sentence_per_group():
    from raydebias.baselines.cda import counterfactual_versions

    assert counterfactual_versions("He told her.", "gender") == ["She told his."]  # her -> his: bias-bench's last entry
    got = counterfactual_versions("The Jews met at the synagogue.", "religion")
    assert got == ["The Christians met at the church.", "The Muslims met at the mosque."]
    assert counterfactual_versions("A plain sentence.", "race") == []
    with pytest.raises(ValueError, match="unknown bias attribute 'age'"):
        counterfactual_versions("x", "age")
