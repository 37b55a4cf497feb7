"""spacy-ner: the entity_ruler patterns (`ner_patterns`) and the spaCy pipeline built from them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from raydebias.tiny.inputs import _gazetteer_from_tsv, builtin_gazetteer

if TYPE_CHECKING:
    from raydebias.tiny.inputs import BuildInputs

DAY_RE = r"^(?:[1-9]|[12]\d|3[01])(?:st|nd|rd|th)?$"
YEAR_RE = r"^(?:19|20)\d\d$"
DECADE_RE = r"^(?:(?:19|20)?\d0'?s|'\d0s)$"
# Digits that are not a 4-digit year 1900-2099 (those are DATE, and two labels on the same span
# would make the winner depend on match order).
CARDINAL_RE = r"^(?!(?:19|20)\d\d$)\d+(?:[.,]\d+)*$"
NUMBER_RE = r"^\d+(?:[.,]\d+)*$"
ORDINAL_RE = r"^\d*(?:1st|2nd|3rd|[04-9]th|1[1-3]th)$"
CLOCK_RE = r"^(?:[01]?\d|2[0-3]):[0-5]\d$"
HOUR_RE = r"^(?:[1-9]|1[0-2])$"
MONEY_SUFFIX_RE = r"^\d+(?:\.\d+)?[kKmMbB]$"


def ner_patterns() -> list[dict]:
    """All entity_ruler patterns of spacy-ner, in a deterministic order.

    Phrase patterns come from the built-in gazetteer, overridden by the shipped TSV gazetteer (the
    project's own data knows better). Token patterns cover the number-like entity types.
    """
    gaz = builtin_gazetteer()
    first_names, surnames, titles = gaz["first_names"], gaz["surnames"], gaz["titles"]
    months, weekdays, number_words = gaz["months"], gaz["weekdays"], gaz["number_words"]
    date_units, money_words = gaz["date_units"], gaz["money_words"]
    phrases: dict[str, str] = {}
    # The first label a phrase appears under wins (a known first name is PERSON before anything else).
    builtin = [("PERSON", gaz["phrases"]["PERSON"] + first_names),
               *((label, texts) for label, texts in gaz["phrases"].items() if label != "PERSON")]
    for label, texts in builtin:
        for text in texts:
            phrases.setdefault(text, label)
    for text, label in _gazetteer_from_tsv():
        phrases[text] = label
    patterns: list[dict] = [{"label": label, "pattern": text} for text, label in sorted(phrases.items())]

    def tok(label: str, *pattern: dict) -> None:
        patterns.append({"label": label, "pattern": list(pattern)})

    number = {"TEXT": {"REGEX": NUMBER_RE}}
    number_word = {"LOWER": {"IN": number_words}}
    month = {"ORTH": {"IN": months}}
    day = {"TEXT": {"REGEX": DAY_RE}}
    year = {"TEXT": {"REGEX": YEAR_RE}}
    not_name = months + weekdays + titles + ["I"]

    # PERSON: known first name + a capitalised word; a capitalised word + known surname; title + name.
    tok(
        "PERSON",
        {"ORTH": {"IN": first_names}},
        {"IS_TITLE": True, "IS_STOP": False, "ORTH": {"NOT_IN": not_name}},
    )
    tok(
        "PERSON",
        {"IS_TITLE": True, "IS_STOP": False, "ORTH": {"NOT_IN": not_name}},
        {"ORTH": {"IN": surnames}},
    )
    tok(
        "PERSON", {"ORTH": {"IN": titles}}, {"IS_TITLE": True, "IS_STOP": False, "ORTH": {"NOT_IN": not_name}}
    )
    tok("PERSON", {"ORTH": {"IN": titles}}, {"IS_TITLE": True}, {"IS_TITLE": True, "IS_STOP": False})
    # MONEY: $40, $1,200.50, $40k, $5 million, 40 dollars, 20 bucks.
    for symbol in gaz["currency_symbols"]:
        tok("MONEY", {"ORTH": symbol}, number)
        tok("MONEY", {"ORTH": symbol}, {"TEXT": {"REGEX": MONEY_SUFFIX_RE}})
        tok(
            "MONEY",
            {"ORTH": symbol},
            number,
            {"LOWER": {"IN": ["k", "thousand", "million", "billion", "grand"]}},
        )
    tok("MONEY", number, {"LOWER": {"IN": money_words}})
    tok("MONEY", number_word, {"LOWER": {"IN": money_words}})
    tok("MONEY", number_word, number_word, {"LOWER": {"IN": money_words}})
    # DATE: June | June 14 | June 14, 2019 | June 2019 | 14 June (2019) | the 14th of June | weekdays |
    # years | decades | last/next week | two weeks (ago) | today.
    tok("DATE", month)
    tok("DATE", month, day)
    tok("DATE", month, day, {"ORTH": ","}, year)
    tok("DATE", month, day, year)
    tok("DATE", month, year)
    tok("DATE", day, month)
    tok("DATE", day, month, year)
    tok("DATE", {"LOWER": "the"}, day, {"LOWER": "of"}, month)
    tok("DATE", {"ORTH": {"IN": weekdays}})
    tok("DATE", {"ORTH": {"IN": weekdays}}, {"ORTH": ","}, month, day)
    tok("DATE", {"ORTH": {"IN": weekdays}}, month, day)
    tok("DATE", year)
    tok("DATE", {"TEXT": {"REGEX": DECADE_RE}})
    tok("DATE", {"LOWER": "the"}, {"TEXT": {"REGEX": DECADE_RE}})
    tok("DATE", {"LOWER": {"IN": ["today", "yesterday", "tomorrow"]}})
    relative_targets = date_units + [w.lower() for w in weekdays] + ["summer", "winter", "spring", "fall"]
    tok("DATE", {"LOWER": {"IN": ["last", "next", "this", "that"]}}, {"LOWER": {"IN": relative_targets}})
    for amount in (number, number_word, {"LOWER": {"IN": ["a", "an", "few", "several", "couple"]}}):
        tok("DATE", amount, {"LOWER": {"IN": date_units}})
        tok("DATE", amount, {"LOWER": {"IN": date_units}}, {"LOWER": "ago"})
        tok("DATE", amount, {"LOWER": {"IN": date_units}}, {"LOWER": "old"})
    tok("DATE", {"LOWER": "a"}, {"LOWER": {"IN": ["few", "couple"]}}, {"LOWER": "of", "OP": "?"},
        {"LOWER": {"IN": date_units}}, {"LOWER": "ago"})  # fmt: skip
    # TIME: 3pm, 3 p.m., 10:30, 10:30pm, two hours, tonight, last night, this morning.
    ampm = {"LOWER": {"IN": ["am", "pm", "a.m.", "p.m."]}}
    tok("TIME", {"TEXT": {"REGEX": HOUR_RE}}, ampm)
    tok("TIME", {"TEXT": {"REGEX": CLOCK_RE}})
    tok("TIME", {"TEXT": {"REGEX": CLOCK_RE}}, ampm)
    tok("TIME", {"LOWER": {"IN": ["noon", "midnight", "tonight"]}})
    tok("TIME", {"LOWER": {"IN": ["last", "this", "tomorrow", "yesterday"]}},
        {"LOWER": {"IN": ["night", "morning", "afternoon", "evening"]}})  # fmt: skip
    for amount in (number, number_word, {"LOWER": {"IN": ["an", "a", "few", "several"]}}):
        tok("TIME", amount, {"LOWER": {"IN": gaz["time_units"]}})
    # PERCENT: 50%, 50 percent, fifty percent.
    tok("PERCENT", number, {"ORTH": "%"})
    tok("PERCENT", number, {"LOWER": {"IN": ["percent", "pct"]}})
    tok("PERCENT", number_word, {"LOWER": {"IN": ["percent", "pct"]}})
    # QUANTITY: 20 pounds, 5 miles.
    tok("QUANTITY", number, {"LOWER": {"IN": gaz["quantity_units"]}})
    tok("QUANTITY", number_word, {"LOWER": {"IN": gaz["quantity_units"]}})
    # ORDINAL: first, 3rd.
    tok("ORDINAL", {"LOWER": {"IN": gaz["ordinal_words"]}})
    tok("ORDINAL", {"TEXT": {"REGEX": ORDINAL_RE}})
    # CARDINAL: 150, 1,200, two, twenty five (years 1900-2099 are DATE instead).
    tok("CARDINAL", {"TEXT": {"REGEX": CARDINAL_RE}})
    tok("CARDINAL", {"LOWER": {"IN": number_words}, "OP": "+"})
    return patterns


def _build_spacy_ner(name: str, dest: Path, final: Path, inputs: BuildInputs) -> None:
    """spacy.blank("en") + entity_ruler, standing in for en_core_web_trf's NER (ENV.md "spaCy")."""
    import spacy

    nlp = spacy.blank("en")
    nlp.meta["name"] = "tiny_ner"
    nlp.meta["version"] = "0.0.0"
    nlp.meta["description"] = "raydebias tiny kit: rule-based stand-in for en_core_web_trf NER"
    # phrase_matcher_attr ORTH = case-sensitive gazetteer: lowercase "may", "will", "bill", "china",
    # "turkey" in running text are words, not entities, as en_core_web_trf's casing cues also say.
    # overwrite_ents so the ruler's spans win over any NER put before it; among overlapping matches
    # the longest wins ("June 14" DATE beats CARDINAL "14", "$40" MONEY beats "40").
    ruler = nlp.add_pipe("entity_ruler", config={"phrase_matcher_attr": "ORTH", "overwrite_ents": True})
    ruler.add_patterns(inputs.patterns)
    nlp.to_disk(dest)
